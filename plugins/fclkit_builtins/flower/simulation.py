"""Simulation mode: Flower's Simulation Runtime (Ray) on this machine or a Ray cluster.

The ServerApp runs in a thread of this process and drives the experiment that
``fclkit.run`` already prepared; every client is a virtual SuperNode whose
ClientApp runs in a Ray actor (``num_cpus_per_client``/``num_gpus_per_client``
each). An actor builds and prepares the experiment once and then serves many
clients; the clients' states live in their nodes' ``context.state``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from fclkit.errors import FclkitError


class _DropDeprecation(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "DEPRECATED FEATURE" not in record.getMessage() and \
            "deprecated feature" not in record.getMessage()


@contextlib.contextmanager
def quiet_flower(verbose: bool) -> Iterator[None]:
    """Flower logs every message at INFO; keep warnings and errors unless asked."""
    logger = logging.getLogger("flwr")
    level, dropper = logger.level, _DropDeprecation()
    handlers = list(logger.handlers)
    if not verbose:
        logger.setLevel(logging.WARNING)
    for h in handlers:
        h.addFilter(dropper)
    try:
        yield
    finally:
        logger.setLevel(level)
        for h in handlers:
            h.removeFilter(dropper)


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
    return {
        "client_resources": {"num_cpus": options.num_cpus_per_client,
                             "num_gpus": options.num_gpus_per_client},
        "init_args": init_args,
    }


def run_simulation(experiment: Any, options: Any) -> None:
    """Run ``experiment`` (already prepared) with one virtual SuperNode per client."""
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0" if options.flower_logs else "1")
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation as flower_run_simulation

    from .client_app import client_app
    from .executor import FlowerExecutor

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
    with quiet_flower(options.flower_logs), _visible_gpus(gpus):
        flower_run_simulation(server_app=server_app, client_app=client_app,
                              num_supernodes=experiment.config.clients,
                              backend_config=backend_config(options),  # type: ignore[arg-type]
                              verbose_logging=options.flower_logs)
    if experiment.metrics is None:
        raise FclkitError("the Flower simulation ended before the run finished",
                          hint="rerun with --engine-opt flower_logs=true to see Flower's logs")
