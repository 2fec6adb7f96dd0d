"""Avalanche imported lazily (``fclkit_builtins.avalanche.lazy_import``): the strategies get
Avalanche's own objects, without the libraries only Avalanche's unused modules import.

Each check runs in a fresh interpreter (what a process imports is the point).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: every built-in strategy is built and trained one round; then what was imported is listed
BUILD_ALL = r"""
import json, sys, torch
from fclkit.interfaces import TrainContext
from fclkit.messages import RoundInfo
from fclkit.stream import TaskData
from fclkit_builtins.avalanche import strategies as S

torch.manual_seed(0)
ctx = TrainContext(device="cpu", seed=0, num_classes=4, batch_size=8, lr=0.05,
                   optimizer="sgd", momentum=0.9, weight_decay=0.0)
x, y = torch.randn(32, 6), torch.arange(32) % 4
task = TaskData(task_id=0, classes=(0, 1, 2, 3), x_train=x, y_train=y, x_test=x, y_test=y)
losses = {}
for cls in S.STRATEGIES:
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    strategy = cls(model, cls.Options(), ctx)
    torch.manual_seed(2)
    report = strategy.train_round(task, round_info=RoundInfo(0, 0, 1), epochs=1)
    losses[cls.name] = report.loss
heavy = {m: m in sys.modules for m in ("torchmetrics", "wandb", "gdown", "GPUtil",
                                       "avalanche.evaluation.metrics.topk_acc",
                                       "avalanche.benchmarks.classic")}
out = {"losses": losses, "heavy": heavy}
if "--complete" in sys.argv:
    from fclkit_builtins.avalanche import lazy_import
    from torch.utils.data import Dataset

    out["pending"] = len(lazy_import.lazy_packages())
    out["wrong"] = lazy_import.complete_all()
    out["after_complete"] = {m: m in sys.modules for m in ("torchmetrics", "wandb")}
    out["dataset_add_patched"] = Dataset.__add__.__module__ == "avalanche"
    import avalanche.benchmarks, avalanche.training.plugins, avalanche.training.supervised
    import avalanche.evaluation.metrics, avalanche.benchmarks.utils
    out["names"] = {
        m.__name__: sorted(f"{k}:{getattr(v, '__module__', type(v).__name__)}"
                           for k, v in vars(m).items() if not k.startswith("__"))
        for m in (avalanche.benchmarks, avalanche.training.plugins,
                  avalanche.training.supervised, avalanche.evaluation.metrics,
                  avalanche.benchmarks.utils)}
print(json.dumps(out))
"""

NAMES_EAGER = r"""
import json, torch
import avalanche.benchmarks, avalanche.training.plugins, avalanche.training.supervised
import avalanche.evaluation.metrics, avalanche.benchmarks.utils
from torch.utils.data import Dataset
print(json.dumps({"names": {
    m.__name__: sorted(f"{k}:{getattr(v, '__module__', type(v).__name__)}"
                       for k, v in vars(m).items() if not k.startswith("__"))
    for m in (avalanche.benchmarks, avalanche.training.plugins,
              avalanche.training.supervised, avalanche.evaluation.metrics,
              avalanche.benchmarks.utils)},
    "dataset_add_patched": Dataset.__add__.__module__ == "avalanche"}))
"""


def _python(code: str, *args: str, eager: bool = False) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), str(ROOT / "plugins"), os.environ.get("PYTHONPATH", "")])}
    env.pop("FCLKIT_AVALANCHE_EAGER", None)
    if eager:
        env["FCLKIT_AVALANCHE_EAGER"] = "1"
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", code, *args],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@functools.cache
def _lazy_run() -> dict:
    return _python(BUILD_ALL, "--complete")


def test_strategies_build_and_train_without_avalanche_unused_libraries():
    lazy = _lazy_run()
    # the libraries only Avalanche's metrics, loggers and dataset downloaders use
    assert not any(lazy["heavy"].values()), lazy["heavy"]
    assert lazy["pending"] > 0
    # completing every package's __init__ binds the very objects handed out before
    assert lazy["wrong"] == []
    assert lazy["after_complete"] == {"torchmetrics": True, "wandb": True}
    assert lazy["dataset_add_patched"]  # avalanche/__init__.py's patch ran as usual

    eager = _python(BUILD_ALL, eager=True)
    assert eager["heavy"]["torchmetrics"] and eager["heavy"]["avalanche.benchmarks.classic"]
    # the same Avalanche code trains: bit-identical losses for every strategy
    assert lazy["losses"] == eager["losses"]
    assert set(lazy["losses"]) == {"naive", "ewc", "lwf", "replay", "si", "mas", "agem",
                                   "gem", "der"}


def test_completed_packages_hold_what_a_normal_import_binds():
    lazy = _lazy_run()
    eager = _python(NAMES_EAGER, eager=True)
    assert eager["dataset_add_patched"]
    for package, names in eager["names"].items():
        assert lazy["names"][package] == names, package
