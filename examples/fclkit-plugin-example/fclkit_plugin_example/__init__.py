"""fclkit-plugin-example: the ``l2-anchor`` strategy, ``logreg`` model and ``fedavgm`` fusion.

This module is imported by ``fclkit plugins`` and ``fclkit --help``, so it stays
light: the strategy module (which imports torch lazily too) is imported inside
the hook.
"""

import fclkit


@fclkit.hookimpl
def register_strategies(register):
    from .strategy import L2Anchor

    register(L2Anchor)


@fclkit.hookimpl
def register_client_models(register):
    from .model import LogisticRegression

    register(LogisticRegression)


@fclkit.hookimpl
def register_fusions(register):
    from .fusion import FedAvgM

    register(FedAvgM)
