"""Built-in loggers: ``tensorboard`` (on by default) and ``wandb`` (when asked for).

``tensorboard`` is used whenever the ``tensorboard`` package is installed
(Avalanche depends on it, so it normally is) and writes ``RUN_DIR/tensorboard/``;
look at one or several runs with ``tensorboard --logdir runs``. Writing is done
by ``torch.utils.tensorboard.SummaryWriter``.

``wandb`` (``--loggers wandb``) sends the same scalars to Weights & Biases through
the ``wandb`` package (also an Avalanche dependency); ``mode = "offline"`` keeps
the run in ``RUN_DIR/wandb/`` for a later ``wandb sync``.
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
from fclkit.config import one_of, positive_float, setting
from fclkit.interfaces import ExperimentLogger


def _relative_dir(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, str) or not value or Path(value).is_absolute() or ".." in Path(
            value).parts:
        raise fclkit.ConfigError(attribute.name, value,
                                 "must be a folder name inside the results folder")


@attrs.frozen
class TensorBoardOptions:
    subdir: str = setting("tensorboard", "folder inside the results folder for the event "
                          "files", _relative_dir)
    flush_seconds: float = setting(
        30.0, "how often pending events are written to disk while the run goes on",
        positive_float)


class TensorBoardLogger(ExperimentLogger):
    name = "tensorboard"
    description = "TensorBoard event files in RUN_DIR/tensorboard (on when installed)"
    Options = TensorBoardOptions
    enabled_by_default = True
    needs_run_dir = True

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if importlib.util.find_spec("tensorboard") is None:
            return "the tensorboard package is not installed: pip install tensorboard"
        return None

    def start(self, run_dir: Path | None, config: Mapping[str, Any]) -> None:
        import tomli_w
        from torch.utils.tensorboard import SummaryWriter

        assert run_dir is not None  # needs_run_dir: the core starts it only with a folder
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / self.options.subdir),
                                    flush_secs=int(max(1, self.options.flush_seconds)))
        self.writer.add_text("config", "```toml\n" + tomli_w.dumps(dict(config)) + "```")

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, global_step=step)

    def finish(self, status: str) -> None:
        writer = getattr(self, "writer", None)
        if writer is not None:
            writer.add_text("status", status)
            writer.close()


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


@fclkit.hookimpl
def register_loggers(register):
    register(TensorBoardLogger)
    register(WandbLogger)
