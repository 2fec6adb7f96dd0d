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
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

PROJECT_NAME = "fclkit"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

Register = Callable[[type], None]

# ---------------------------------------------------------------- components


@hookspec
def register_strategies(register: Register) -> None:
    """Register :class:`fclkit.ContinualStrategy` subclasses (``--cl NAME``).

    :param register: call ``register(StrategyClass)`` for each strategy.
    """


@hookspec
def register_fusions(register: Register) -> None:
    """Register :class:`fclkit.KnowledgeFusion` subclasses (``--fusion NAME``).

    :param register: call ``register(FusionClass)`` for each fusion.
    """


@hookspec
def register_client_models(register: Register) -> None:
    """Register :class:`fclkit.ClientModel` subclasses (``--client-models NAME,...``).

    :param register: call ``register(ClientModelClass)`` for each small-model architecture.
    """


@hookspec
def register_foundation_models(register: Register) -> None:
    """Register :class:`fclkit.FoundationModel` subclasses (``--fm NAME``).

    :param register: call ``register(FoundationModelClass)`` for each foundation model.
    """


@hookspec
def register_benchmarks(register: Register) -> None:
    """Register :class:`fclkit.Benchmark` subclasses (``--benchmark NAME``).

    :param register: call ``register(BenchmarkClass)`` for each benchmark.
    """


@hookspec
def register_engines(register: Register) -> None:
    """Register :class:`fclkit.Engine` subclasses (``--engine NAME``).

    :param register: call ``register(EngineClass)`` for each execution engine.
    """


@hookspec
def register_loggers(register: Register) -> None:
    """Register :class:`fclkit.ExperimentLogger` subclasses (``--loggers NAME,...``).

    :param register: call ``register(LoggerClass)`` for each metrics tracker.
    """


#: hook name -> component kind it registers
REGISTRATION_HOOKS: dict[str, str] = {
    "register_strategies": "strategy",
    "register_fusions": "fusion",
    "register_client_models": "client_model",
    "register_foundation_models": "foundation_model",
    "register_benchmarks": "benchmark",
    "register_engines": "engine",
    "register_loggers": "logger",
}
