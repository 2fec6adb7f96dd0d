"""Built-in engine ``local``: every client runs in this process (the default)."""

import fclkit


@fclkit.hookimpl
def register_engines(register):
    from .engine import LocalEngine

    register(LocalEngine)
