"""The deployment ServerApp: ``server_app``, started by the SuperLink for ``flwr run``.

It rebuilds the experiment from the run config that :mod:`.deployment` wrote into
the generated Flower App, runs its loop against the SuperNodes through
:class:`.executor.FlowerExecutor`, and writes the result file that the submitting
``fclkit run`` reads back. With a results folder in the run config it writes the
run's checkpoints there (this process holds the server's state and, from the
nodes' replies, every client's), and with ``fclkit-resume`` it continues from the
latest one (``fclkit run --resume RUN_DIR``).
"""

from __future__ import annotations

import json
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from .protocol import (
    RUN_COMPONENTS,
    RUN_CONFIG,
    RUN_DIR,
    RUN_RESULT,
    RUN_RESUME,
    build_experiment,
)

server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """Deployment: rebuild the experiment from the run config, run it, write the result."""
    from fclkit.serialization import atomic_write_text

    from .executor import FlowerExecutor

    run_config = context.run_config
    result_path = str(run_config.get(RUN_RESULT, ""))
    experiment = None
    executor = None

    def write(result: dict[str, Any]) -> None:
        if result_path:
            atomic_write_text(result_path, json.dumps(result))

    try:
        experiment = build_experiment(str(run_config[RUN_CONFIG]),
                                      str(run_config[RUN_COMPONENTS]))
        run_dir = str(run_config.get(RUN_DIR, ""))
        if run_dir:  # checkpoints go into the run's results folder (on this machine)
            from pathlib import Path

            experiment.run_dir = Path(run_dir)
            if run_config.get(RUN_RESUME) is True:
                from fclkit.checkpoint import load_checkpoint

                experiment.resume_state = load_checkpoint(run_dir)
        experiment.prepare()
        executor = FlowerExecutor(grid, experiment, experiment.components.one("engine").options,
                                  deployment=True)
        metrics = experiment.run_loop(executor)
        partial, rows = experiment.partial_metrics()
        write({"status": "ok", "metrics": metrics, "rows": rows,
               "failures": partial.get("failures", [])})
    except BaseException as exc:
        partial, rows = experiment.partial_metrics() if experiment is not None else ({}, [])
        write({"status": "failed", "error": str(exc), "type": type(exc).__name__,
               "hint": getattr(exc, "hint", None), "partial": partial, "rows": rows})
        raise
    finally:
        if executor is not None:  # after the result: `fclkit run` need not wait for it
            executor.close()  # the nodes' workers may exit now
