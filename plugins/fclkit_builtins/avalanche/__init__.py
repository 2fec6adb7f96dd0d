"""Built-in plugin ``avalanche``: continual-learning strategies and classic benchmarks
backed by the real Avalanche library (avalanche-lib).

Strategies (``--cl NAME``): ``naive``, ``ewc``, ``lwf``, ``replay``, ``si``, ``mas``,
``agem``, ``gem``, ``der`` -- each drives Avalanche's own strategy class or plugin
(see :mod:`fclkit_builtins.avalanche.strategies`; how federated rounds map onto Avalanche
experiences is described in :mod:`fclkit_builtins.avalanche.round_driver`).

Benchmarks (``--benchmark NAME``): ``split-mnist``, ``split-fmnist``,
``split-cifar10``, ``split-cifar100`` (see :mod:`fclkit_builtins.avalanche.benchmarks`).

Importing this package is light (no torch, no Avalanche): registration only
needs the classes; the heavy libraries load when a strategy or benchmark is built.
"""

from __future__ import annotations

import fclkit

from .benchmarks import BENCHMARKS
from .strategies import STRATEGIES, AvalancheStrategy

__all__ = ["AvalancheStrategy", "BENCHMARKS", "STRATEGIES", "register_benchmarks",
           "register_strategies"]


@fclkit.hookimpl
def register_strategies(register):
    for cls in STRATEGIES:
        register(cls)


@fclkit.hookimpl
def register_benchmarks(register):
    for cls in BENCHMARKS:
        register(cls)
