"""fclkit's built-in plugins, one subpackage each.

Each subpackage is registered through the ``fclkit`` entry-point group exactly as
a third-party plugin is (see ``pyproject.toml``); the core never imports them.
A subpackage's ``__init__`` only registers its components; the code lives in its
modules.
"""
