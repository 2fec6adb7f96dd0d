"""A run's lifecycle: plugins, the results folder, loggers, torch threads, resuming.

:func:`run` is what ``fclkit run`` and ``fclkit.run`` call: it builds the
registry, creates the results folder (or reopens it to resume), starts the
loggers, prepares the :class:`~fclkit.runtime.experiment.Experiment`, lets its
engine drive the loop, and writes what the run produced -- also when it stops
early, so nothing is lost.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs

from ..config import ExperimentConfig
from ..errors import FclkitError
from ..plugins import Registry, build_registry, components_from_classes
from ..progress import Reporter
from ..tracking import AUTO, LoggerSet, final_scalars
from .experiment import Experiment


@attrs.define
class RunResult:
    """What :func:`run` returns: the configuration, the results folder and the metrics."""

    config: ExperimentConfig
    run_dir: Path | None
    metrics: dict[str, Any]

    def accuracy_matrix(self, model: str = "small", client: int | None = None
                        ) -> list[list[float]]:
        """``R[i][j]`` for one client, or the mean over clients when ``client`` is None."""
        if client is None:
            return self.metrics["mean"][model]["accuracy_matrix"]
        return self.metrics["per_client"][str(client)][model]["accuracy_matrix"]

    def summary(self, model: str = "small") -> dict[str, Any]:
        return self.metrics["mean"][model]


def start_loggers(experiment: Experiment, run_dir: Path | None) -> None:
    """Start the selected loggers (those needing a results folder only when there is one)."""
    loggers = []
    for name, logger in experiment.components.named("logger").items():
        if logger.cls.needs_run_dir and run_dir is None:
            if list(experiment.config.loggers) != [AUTO]:
                experiment.reporter.warn(f"logger {name!r} writes into the results folder "
                                         "and this run writes none; it is skipped")
            continue
        loggers.append(logger.cls(logger.options))
    experiment.loggers = LoggerSet(loggers, experiment.reporter)
    experiment.loggers.start(run_dir, experiment.config.to_dict())


def run(config: ExperimentConfig | None, *, registry: Registry | None = None,
        components: Iterable[type] = (), plugins: Iterable[Any] = (),
        reporter: Reporter | None = None, write_results: bool = True,
        resume: str | Path | None = None) -> RunResult:
    """Run one experiment and (by default) write its results folder.

    :param config: the experiment; None (or anything) when resuming: the run's own
        ``config.toml`` is read, once.
    :param registry: components to use (default: every installed plugin).
    :param components: component classes from research code, used by their ``name``
        without packaging (e.g. ``components=[MyStrategy]`` then ``cl="my-strategy"``).
    :param plugins: extra plugin modules/objects with ``@fclkit.hookimpl`` functions.
    :param reporter: progress events (the CLI passes rich progress bars).
    :param write_results: False to keep everything in memory (no checkpoints either).
    :param resume: a results folder whose run stopped early: continue it from its
        latest checkpoint, in the same folder.
    """
    from .. import results

    started = time.perf_counter()
    # a results folder that cannot be made, or a --resume folder that is no run's, is
    # refused before any plugin, benchmark or model is loaded
    if resume is not None:
        resume = results.check_resume_dir(resume)
    elif write_results and isinstance(config, ExperimentConfig):
        results.check_output(config.output)
    if registry is None:
        registry = build_registry(extra_plugins=plugins)
    components_from_classes(registry, components)
    for broken in registry.broken:
        (reporter or Reporter()).warn(f"plugin {broken.plugin!r} was not loaded: {broken.error}")
    resume_state = None
    run_dir: Path | None = None
    if resume is not None:
        from ..checkpoint import load_checkpoint
        from ..config import load_config

        run_dir = Path(resume)
        config = load_config(run_dir / "config.toml")
        resume_state = load_checkpoint(resume)
    if config is None:
        raise FclkitError("run() needs a configuration (or resume=RUN_DIR)")
    experiment = Experiment(config, registry, reporter)
    experiment.created = started
    config = experiment.config  # auto values resolved
    import torch

    threads_before = torch.get_num_threads()
    # restored when the run ends: no global state leaks to the caller. A resumed run with
    # threads = 0 continues with the count the interrupted one computed with (recorded in
    # its checkpoint): float results depend on it, so a resume in a process or on a
    # machine with another default would not reproduce the uninterrupted run
    threads = config.threads or int((resume_state or {}).get("torch_threads", 0) or 0)
    if threads:
        torch.set_num_threads(threads)
    if resume is None:
        run_dir = results.create_run_dir(config) if write_results else None
        if run_dir is not None:
            results.write_start(run_dir, config, experiment.components.records())
    elif run_dir is not None:
        results.mark_resumed(run_dir)
    experiment.run_dir = run_dir
    experiment.resume_state = resume_state
    loggers = experiment.loggers
    try:
        start_loggers(experiment, run_dir)
        loggers = experiment.loggers
        experiment.prepare()
        experiment.make_engine().run(experiment)
    except BaseException as exc:
        if run_dir is not None:
            partial, rows = experiment.partial_metrics()
            results.write_failure(run_dir, partial, rows, exc)
        loggers.finish("interrupted" if isinstance(exc, KeyboardInterrupt) else "failed")
        raise
    finally:
        experiment.reporter.close()
        torch.set_num_threads(threads_before)
    metrics = experiment.metrics or {}
    metrics["timings_seconds"]["total"] = (
        time.perf_counter() - started + (resume_state or {}).get("timings", {}).get("total", 0))
    rows = experiment.partial_metrics()[1]
    if run_dir is not None:
        results.write_end(run_dir, metrics, rows)
    if not loggers.fed:  # the engine ran the loop in another process
        loggers.replay(metrics, rows, config.rounds)
    loggers.log(final_scalars(metrics), int(metrics.get("tasks", config.tasks)) * config.rounds)
    loggers.finish("finished")
    return RunResult(config=config, run_dir=run_dir, metrics=metrics)
