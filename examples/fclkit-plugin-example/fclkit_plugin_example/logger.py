"""The ``jsonl`` logger: every logged step as one JSON line in ``RUN_DIR/metrics.jsonl``.

A tracker such as Weights & Biases or MLflow is written the same way: ``start``
opens the run, ``log_metrics`` forwards the scalars, ``finish`` closes it.
"""

from __future__ import annotations

import json

import attrs

import fclkit
from fclkit.config import setting


def _file_name(inst, attribute, value):
    if not isinstance(value, str) or not value or "/" in value or value.startswith("."):
        raise fclkit.ConfigError(attribute.name, value, "must be a plain file name")


class JsonLinesLogger(fclkit.ExperimentLogger):
    name = "jsonl"
    description = "every logged step as one JSON line in RUN_DIR/metrics.jsonl"
    needs_run_dir = True  # writes into the results folder
    enabled_by_default = False  # used when asked for: --loggers jsonl

    @attrs.frozen
    class Options:
        file: str = setting("metrics.jsonl", "file name inside the results folder", _file_name)

    def start(self, run_dir, config):
        self.file = open(run_dir / self.options.file, "a", encoding="utf-8")  # noqa: SIM115

    def log_metrics(self, metrics, step):
        self.file.write(json.dumps({"step": step, **metrics}) + "\n")
        self.file.flush()  # readable while the run goes on (tail -f, a live plot)

    def finish(self, status):
        self.file.write(json.dumps({"status": status}) + "\n")
        self.file.close()
