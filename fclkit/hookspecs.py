"""The hooks through which plugins make components available by name.

A plugin is any module or object with functions marked ``@fclkit.hookimpl``
whose names are the hooks below. Each hook receives a ``register`` callable;
call it once per component class::

    import fclkit

    @fclkit.hookimpl
    def register_strategies(register):
        register(MyStrategy)

The host checks what is registered (a subclass of the right interface, a unique
lowercase ``name``) and remembers which plugin gave it. A function marked
``@fclkit.hookimpl`` whose name is not a hook here is an error (so a misspelt
hook never goes unnoticed).

There is one ``register_*`` hook per component kind, made from the kinds table
(:data:`fclkit.kinds.KINDS`; ``docs/plugins.md`` lists them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT_NAME = "fclkit"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

Register = Callable[[type], None]


def _hookspec(kind: Any) -> Callable[[Register], None]:
    def register_hook(register: Register) -> None:
        """(replaced by the kind's own docstring)"""

    register_hook.__name__ = register_hook.__qualname__ = kind.hook
    register_hook.__doc__ = kind.hook_doc
    return hookspec(register_hook)


def specs() -> type:
    """The hookspecs, one ``register_*`` hook per component kind (:data:`fclkit.kinds.KINDS`),
    as a namespace for ``PluginManager.add_hookspecs``."""
    from . import kinds

    return type("FclkitHookspecs", (), {k.hook: staticmethod(_hookspec(k)) for k in kinds.KINDS})


def registration_hooks() -> dict[str, str]:
    """Hook name -> the component kind it registers."""
    from . import kinds

    return {k.hook: k.name for k in kinds.KINDS}


#: hook name -> component kind it registers (of the kinds table at import)
REGISTRATION_HOOKS: dict[str, str] = registration_hooks()
