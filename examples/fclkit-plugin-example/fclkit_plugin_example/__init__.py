"""fclkit-plugin-example: a strategy, a client model, a fusion and a logger.

This module is imported by ``fclkit plugins`` and ``fclkit --help``, so it stays
light: each component's module is imported inside its hook.
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


@fclkit.hookimpl
def register_loggers(register):
    from .logger import JsonLinesLogger

    register(JsonLinesLogger)
