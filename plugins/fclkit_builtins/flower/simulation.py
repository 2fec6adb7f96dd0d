"""Simulation mode: Flower's Simulation Runtime (Ray) on this machine or a Ray cluster.

The ServerApp runs in a thread of this process and drives the experiment that
``fclkit.run`` already prepared; every client is a virtual SuperNode whose
ClientApp runs in a Ray actor (``num_cpus_per_client``/``num_gpus_per_client``
each). An actor builds and prepares the experiment once and then serves many
clients; the clients' states live in their nodes' ``context.state`` (and, when the
run writes checkpoints, travel back with every reply).

Ray is started here, not by Flower, so that its workers import what this process
imported (:mod:`.ray_worker`); Flower's error logs (pages of Ray tracebacks) are
kept back and the run's error names their cause in one line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

from fclkit.errors import FclkitError

#: Ray's worker_process_setup_hook (see :mod:`.ray_worker`)
SETUP_HOOK = "fclkit_builtins.flower.ray_worker.setup"


class _DropDeprecation(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "DEPRECATED FEATURE" not in record.getMessage() and \
            "deprecated feature" not in record.getMessage()


class _KeepErrors(logging.Filter):
    """Keeps Flower's error records (a Ray traceback each) back, for the run's error."""

    def __init__(self) -> None:
        super().__init__()
        self.errors: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        if len(self.errors) < 20:
            self.errors.append(record.getMessage())
        return False


@contextlib.contextmanager
def quiet_flower(verbose: bool, errors: list[str] | None = None) -> Iterator[None]:
    """Flower logs every message at INFO; keep warnings unless asked. Its errors go to
    ``errors`` instead of the terminal (shown too with ``verbose``)."""
    logger = logging.getLogger("flwr")
    level = logger.level
    filters: list[logging.Filter] = [_DropDeprecation()]
    keeper = None
    if not verbose and errors is not None:
        keeper = _KeepErrors()
        keeper.errors = errors
        filters.append(keeper)
    handlers = list(logger.handlers)
    if not verbose:
        logger.setLevel(logging.WARNING)
    for h in handlers:
        for f in filters:
            h.addFilter(f)
    try:
        yield
    finally:
        logger.setLevel(level)
        for h in handlers:
            for f in filters:
                h.removeFilter(f)


@contextlib.contextmanager
def quiet_ray(verbose: bool, errors: list[str]) -> Iterator[None]:
    """Ray prints every error the raylet reports (a worker that died: a traceback each)
    to this process's stdout, whatever ``log_to_driver`` says; unless ``verbose``, they
    go to ``errors`` instead (the run's error names their cause)."""
    try:
        import ray._private.worker as ray_worker

        original = ray_worker.print_to_stdstream
    except (ImportError, AttributeError):  # another Ray: leave its output alone
        yield
        return
    if verbose:
        yield
        return

    def keep(data: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(data, dict) and data.get("pid") == "raylet":
            if len(errors) < 20:
                errors.extend(str(line) for line in data.get("lines", [])[:2])
            return None
        return original(data, *args, **kwargs)

    ray_worker.print_to_stdstream = keep  # looked up by Ray's error listener at each call
    try:
        yield
    finally:
        ray_worker.print_to_stdstream = original


@contextlib.contextmanager
def _visible_gpus(ids: str) -> Iterator[None]:
    """Let Ray (and so the clients) see only ``ids``; this process keeps its CUDA context."""
    if not ids:
        yield
        return
    old = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = ids
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = old


def backend_config(options: Any) -> dict[str, Any]:
    """Flower's ``backend_config`` for Ray from the engine options."""
    init_args: dict[str, Any] = {"include_dashboard": False,
                                 "logging_level": logging.INFO if options.flower_logs
                                 else logging.ERROR,
                                 "log_to_driver": bool(options.flower_logs)}
    if options.ray_address:
        init_args["address"] = options.ray_address
    else:
        # start a private local Ray: without this, Ray joins any cluster it finds on the
        # machine (even a stale /tmp/ray/ray_current_cluster left by a dead one) and then
        # refuses num_cpus
        init_args["address"] = "local"
        init_args["num_cpus"] = options.ray_num_cpus or os.cpu_count() or 1
        if options.ray_num_gpus >= 0:
            init_args["num_gpus"] = options.ray_num_gpus
        # Ray starts one idle Python worker per CPU when it starts and again when this
        # process connects; Flower's actors cannot use them (they need this run's
        # runtime environment), so on a small machine they only compete with the
        # actors' start for the CPUs
        init_args["_system_config"] = {"enable_worker_prestart": False,
                                       "prestart_worker_first_driver": False}
    return {
        "client_resources": {"num_cpus": options.num_cpus_per_client,
                             "num_gpus": options.num_gpus_per_client},
        "init_args": init_args,
    }


def start_ray(init_args: dict[str, Any]) -> bool:
    """Start (or join) Ray as Flower would, plus the worker set-up hook; False when Ray
    was already running in this process (then it is left as it is)."""
    import ray

    if ray.is_initialized():
        return False
    # what Flower's Ray backend does: the workers get this process's sys.path ...
    pythonpath = os.pathsep.join(sys.path)
    if os.environ.get("PYTHONPATH"):
        pythonpath = f"{pythonpath}{os.pathsep}{os.environ['PYTHONPATH']}"
    os.environ["PYTHONPATH"] = pythonpath
    # ... and import fclkit from there before Ray puts our working directory first
    ray.init(runtime_env={"env_vars": {"PYTHONPATH": pythonpath},
                          "worker_process_setup_hook": SETUP_HOOK}, **init_args)
    return True


def run_simulation(experiment: Any, options: Any) -> None:
    """Run ``experiment`` (already prepared) with one virtual SuperNode per client."""
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0" if options.flower_logs else "1")
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation as flower_run_simulation

    from .client_app import client_app
    from .executor import FlowerExecutor
    from .protocol import cause

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        executor = FlowerExecutor(grid, experiment, options, deployment=False)
        try:
            experiment.run_loop(executor)
        finally:
            executor.close()

    experiment.reporter.phase("starting the Flower simulation (Ray)")
    gpus = "" if options.ray_address else options.client_gpus  # a cluster has its own
    config = backend_config(options)
    errors: list[str] = []
    started = False
    try:
        with quiet_flower(options.flower_logs, errors), \
                quiet_ray(options.flower_logs, errors), _visible_gpus(gpus):
            started = start_ray(config["init_args"])
            flower_run_simulation(server_app=server_app, client_app=client_app,
                                  num_supernodes=experiment.config.clients,
                                  backend_config=config,  # type: ignore[arg-type]
                                  verbose_logging=options.flower_logs)
    finally:
        if started:
            import ray

            ray.shutdown()  # Flower shuts it down at a normal end; not after a crash
    if experiment.metrics is None:
        why = next((cause(e) for e in errors if "Traceback" in e or "Error" in e), "")
        raise FclkitError("the Flower simulation ended before the run finished"
                          + (f": {why}" if why else ""),
                          hint="rerun with --engine-opt flower_logs=true to see Flower's logs")
