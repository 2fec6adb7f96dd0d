"""fclkit: Federated Continual Learning with large-small model collaboration.

``import fclkit`` is light (no torch, Avalanche or transformers): heavy
libraries load when a run needs them.

Python API::

    import fclkit
    config = fclkit.ExperimentConfig(cl="ewc", fusion="fedavg", clients=3)
    result = fclkit.run(config)
    print(result.metrics["summary"])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import ExperimentConfig, load_config, setting
from .errors import (
    BenchmarkUnavailableError,
    ConfigError,
    DuplicateComponentError,
    FclkitError,
    IncompatibleComponentsError,
    PluginError,
    UnknownComponentError,
)
from .hookspecs import hookimpl
from .interfaces import (
    Benchmark,
    ClientExecutor,
    ClientModel,
    ClientRound,
    ClientSide,
    ContinualStrategy,
    Engine,
    EngineHost,
    ExperimentLogger,
    ExtraLoss,
    FoundationModel,
    FusionContext,
    KnowledgeFusion,
    NoOptions,
    StreamSpec,
    TrainContext,
    TrainReport,
)
from .messages import Download, Failure, FusionResult, RoundInfo, Upload
from .stream import ClientStream, FederatedStream, InputSpec, PublicSet, TaskData

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .runtime.lifecycle import RunResult


def run(config: ExperimentConfig | None = None, **kwargs: Any) -> RunResult:
    """Run an experiment; see :func:`fclkit.runtime.lifecycle.run` for the arguments."""
    from .runtime.lifecycle import run as _run

    if config is None and kwargs.get("resume") is None:
        config = ExperimentConfig()
    return _run(config, **kwargs)


__all__ = [
    "Benchmark", "BenchmarkUnavailableError", "ClientExecutor", "ClientModel", "ClientRound",
    "ClientSide", "ClientStream", "ConfigError", "ContinualStrategy", "Download",
    "DuplicateComponentError", "Engine", "EngineHost",
    "ExperimentConfig", "ExperimentLogger", "ExtraLoss", "Failure", "FclkitError",
    "FederatedStream",
    "FoundationModel", "FusionContext", "FusionResult", "IncompatibleComponentsError",
    "InputSpec", "KnowledgeFusion", "NoOptions", "PluginError", "PublicSet", "RoundInfo",
    "StreamSpec", "TaskData", "TrainContext", "TrainReport", "UnknownComponentError", "Upload",
    "__version__", "hookimpl", "load_config", "run", "setting",
]
