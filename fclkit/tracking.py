"""Feeding a run's metrics to the selected :class:`~fclkit.interfaces.ExperimentLogger`\\ s.

The scalars sent, at ``step = task * rounds + round + 1`` (see
``docs/results-format.md``):

after every round
  ``train/loss`` (mean over the clients that delivered), ``train/clients_ok``,
  ``communication/bytes_up`` and ``communication/bytes_down`` (summed over clients),
  ``time/train_seconds_max``, ``time/fusion_seconds``
after every task, for each evaluated model ``M`` (``small``, ``fm``, ``global_fm``)
  ``accuracy/M/seen_tasks`` (mean over clients of the mean over the tasks seen so
  far), ``accuracy/M/task_J`` (each seen task J, 1-based), ``forgetting/M``
at the end
  ``final/M/average_accuracy``, ``final/M/average_forgetting``, ... (the scalars of
  ``metrics.json``'s ``mean`` section)

Engines that run the loop in another process (Flower deployment) return their
rows and metrics; :meth:`LoggerSet.replay` then sends the same scalars afterwards.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .metrics import SCALARS, forgetting_curve
from .progress import Reporter

AUTO, NONE = "auto", "none"


def resolve_loggers(names: Sequence[str], registry: Any) -> list[Any]:
    """The logger entries ``names`` selects; unknown names and unusable loggers are errors."""
    if list(names) == [NONE]:
        return []
    if list(names) == [AUTO]:
        return [e for e in registry.components["logger"].values()
                if e.cls.enabled_by_default and e.cls.unavailable_reason() is None]
    if AUTO in names or NONE in names:
        raise ConfigError("loggers", ",".join(names),
                          "'auto' and 'none' cannot be combined with logger names")
    entries = []
    for name in names:
        entry = registry.get("logger", name)
        reason = entry.cls.unavailable_reason()
        if reason is not None:
            raise ConfigError("loggers", name, f"logger {name!r} cannot run here: {reason}",
                              hint="install what is missing, or pass --loggers none")
        entries.append(entry)
    return entries


def round_scalars(rows: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Scalars of one round from its ``rounds.csv`` rows (one per client)."""
    rows = list(rows)
    ok = [r for r in rows if r.get("status") == "ok"]
    losses = [v for v in (_number(r.get("train_loss")) for r in ok) if v is not None]
    seconds = [v for v in (_number(r.get("train_seconds")) for r in ok) if v is not None]
    out = {
        "train/clients_ok": float(len(ok)),
        "communication/bytes_up": sum(_number(r.get("bytes_up")) or 0.0 for r in rows),
        "communication/bytes_down": sum(_number(r.get("bytes_down")) or 0.0 for r in rows),
    }
    if losses:
        out["train/loss"] = sum(losses) / len(losses)
    if seconds:
        out["time/train_seconds_max"] = max(seconds)
    fusion = _number(rows[0].get("fusion_seconds")) if rows else None
    if fusion is not None:
        out["time/fusion_seconds"] = fusion
    return out


def _number(value: Any) -> float | None:
    """A row value as a float (rows from ``rounds.csv`` hold strings; empty = None)."""
    return None if value is None or value == "" else float(value)


def task_scalars(matrices: Mapping[Any, Mapping[str, Sequence[Sequence[float]]]],
                 first_task: Mapping[Any, int] | None = None) -> dict[str, float]:
    """Scalars after the last task of ``matrices``: client -> model -> rows of R so far.

    ``first_task``: client -> the task its rows start at (a late joiner's rows begin at
    the task it joined at, and hold every task's accuracy); a client is then counted on
    the tasks from its first one.
    """
    if first_task and any(first_task.get(cid, 0) for cid in matrices):
        return _late_task_scalars(matrices, first_task)
    clients = list(matrices.values())
    out: dict[str, float] = {}
    for model in clients[0]:
        per_client = [c[model] for c in clients]
        t = len(per_client[0]) - 1
        last = [R[t] for R in per_client]
        out[f"accuracy/{model}/seen_tasks"] = sum(sum(row[: t + 1]) / (t + 1)
                                                   for row in last) / len(last)
        for j in range(t + 1):
            out[f"accuracy/{model}/task_{j + 1}"] = sum(row[j] for row in last) / len(last)
        if t > 0:
            forgetting = [forgetting_curve([list(r[: t + 1]) for r in R])[-1]
                          for R in per_client]
            out[f"forgetting/{model}"] = sum(f for f in forgetting if f is not None) / len(last)
    return out


def _late_task_scalars(matrices: Mapping[Any, Mapping[str, Sequence[Sequence[float]]]],
                       first_task: Mapping[Any, int]) -> dict[str, float]:
    out: dict[str, float] = {}
    firsts = {cid: first_task.get(cid, 0) for cid in matrices}
    t = max(firsts[cid] + len(next(iter(m.values()))) - 1 for cid, m in matrices.items())
    for model in next(iter(matrices.values())):
        seen, forgetting = [], []
        per_task: dict[int, list[float]] = {}
        for cid, models in matrices.items():
            f, rows = firsts[cid], models[model]
            last = rows[-1]
            seen.append(sum(last[f: t + 1]) / (t + 1 - f))
            for j in range(f, t + 1):
                per_task.setdefault(j, []).append(last[j])
            if t > f:
                value = forgetting_curve([list(r[f: t + 1]) for r in rows])[-1]
                if value is not None:
                    forgetting.append(value)
        out[f"accuracy/{model}/seen_tasks"] = sum(seen) / len(seen)
        for j, values in sorted(per_task.items()):
            out[f"accuracy/{model}/task_{j + 1}"] = sum(values) / len(values)
        if forgetting:
            out[f"forgetting/{model}"] = sum(forgetting) / len(forgetting)
    return out


def final_scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """``final/MODEL/SCALAR`` for every scalar of ``metrics["mean"]``."""
    out = {}
    for model, summary in metrics.get("mean", {}).items():
        for key in SCALARS:
            value = summary.get(key)
            if value is not None:
                out[f"final/{model}/{key}"] = float(value)
    return out


class LoggerSet:
    """The run's loggers; a logger that raises is warned about and switched off."""

    def __init__(self, loggers: Iterable[Any] = (), reporter: Reporter | None = None) -> None:
        self.loggers = list(loggers)
        self.reporter = reporter or Reporter()
        self.fed = False  # whether the loop sent anything (else replay() at the end)

    def _call(self, method: str, *args: Any) -> None:
        for logger in list(self.loggers):
            try:
                getattr(logger, method)(*args)
            except Exception as exc:  # noqa: BLE001 - a tracker must not stop the run
                self.loggers.remove(logger)
                hint = getattr(exc, "hint", None)
                self.reporter.warn(f"logger {logger.name!r} failed in {method}() and was "
                                   f"switched off ({type(exc).__name__}: {exc}"
                                   + (f"; {hint}" if hint else "")
                                   + "); the results folder is unaffected")

    def start(self, run_dir: Path | None, config: Mapping[str, Any]) -> None:
        self._call("start", run_dir, config)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        if metrics:
            self.fed = True
            self._call("log_metrics", dict(metrics), step)

    def replay(self, metrics: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
               rounds_per_task: int) -> None:
        """Send what a loop run elsewhere produced (from its rows and final metrics)."""
        by_step: dict[int, list[Mapping[str, Any]]] = {}
        for row in rows:
            step = int(row["task"]) * rounds_per_task + int(row["round"]) + 1
            by_step.setdefault(step, []).append(row)
        for step in sorted(by_step):
            self.log(round_scalars(by_step[step]), step)
        per_client = metrics.get("per_client", {})
        first = {cid: (next(iter(models.values())).get("tasks") or [0])[0]
                 for cid, models in per_client.items() if models}
        for t in range(int(metrics.get("tasks", 0))):
            if any(first.values()):  # late joiners: rows and columns from their first task
                matrices = {cid: {m: [[float("nan")] * first[cid] + list(row)
                                      for row in s["accuracy_matrix"][: t + 1 - first[cid]]]
                                  for m, s in models.items()}
                            for cid, models in per_client.items() if first[cid] <= t}
                if matrices:
                    self.log(task_scalars(matrices, first), (t + 1) * rounds_per_task)
                continue
            matrices = {cid: {m: s["accuracy_matrix"][: t + 1] for m, s in models.items()}
                        for cid, models in per_client.items()}
            if matrices:
                self.log(task_scalars(matrices), (t + 1) * rounds_per_task)

    def finish(self, status: str) -> None:
        self._call("finish", status)
        self.loggers = []
