"""The ``tensorboard`` logger: TensorBoard event files in ``RUN_DIR/tensorboard/``.

Importing this module is light: torch (``SummaryWriter``) loads in ``start``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

import fclkit
from fclkit.config import positive_float, setting
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
