"""The ``wandb`` logger: the run's scalars sent to Weights & Biases.

Named ``wandb_logger`` rather than ``wandb`` so it is never mistaken for the ``wandb``
package. Importing this module is light: ``wandb`` loads in ``start``.
"""

from __future__ import annotations

import importlib.util
import netrc
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

import fclkit
from fclkit.config import one_of, setting
from fclkit.interfaces import ExperimentLogger


@attrs.frozen
class WandbOptions:
    project: str = setting("fclkit", "W&B project the runs go to")
    entity: str = setting("", "W&B team or user (default: your default entity)")
    group: str = setting("", "W&B group, e.g. to gather the seeds of one comparison")
    mode: str = setting(
        "online", "'online' sends as the run goes (needs `wandb login` and network); "
        "'offline' keeps the run in RUN_DIR/wandb for `wandb sync`", one_of("online", "offline"))


def _has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


class WandbLogger(ExperimentLogger):
    name = "wandb"
    description = "Weights & Biases run with the same scalars (--loggers wandb)"
    Options = WandbOptions
    needs_run_dir = True  # wandb keeps its own files in RUN_DIR/wandb

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if importlib.util.find_spec("wandb") is None:
            return "the wandb package is not installed: pip install wandb"
        return None

    def start(self, run_dir: Path | None, config: Mapping[str, Any]) -> None:
        from fclkit.network import reachable

        o = self.options
        if o.mode == "online":
            hint = ("use --logger-opt wandb.mode=offline and upload later with "
                    "`wandb sync RUN_DIR/wandb/offline-run-*`")
            if not _has_wandb_credentials():
                raise fclkit.FclkitError("W&B has no API key here: run `wandb login` or set "
                                         "WANDB_API_KEY", hint=hint)
            if not reachable("https://api.wandb.ai", timeout=3.0):
                raise fclkit.FclkitError("api.wandb.ai cannot be reached", hint=hint)
        import wandb

        assert run_dir is not None  # needs_run_dir: the core starts it only with a folder
        self.run = wandb.init(
            project=o.project, entity=o.entity or None, group=o.group or None,
            name=Path(run_dir).name, dir=str(run_dir), config=dict(config), mode=o.mode,
            reinit="create_new", settings=wandb.Settings(silent=True))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log(dict(metrics), step=step)

    def finish(self, status: str) -> None:
        run = getattr(self, "run", None)
        if run is not None:
            run.finish(exit_code=0 if status == "finished" else 1)
