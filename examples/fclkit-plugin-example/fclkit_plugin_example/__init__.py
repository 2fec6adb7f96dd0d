"""fclkit-plugin-example: registers the ``l2-anchor`` strategy.

This module is imported by ``fclkit plugins`` and ``fclkit --help``, so it stays
light: the strategy module (which imports torch lazily too) is imported inside
the hook.
"""

import fclkit


@fclkit.hookimpl
def register_strategies(register):
    from .strategy import L2Anchor

    register(L2Anchor)
