"""Continual-learning metrics from an accuracy matrix (computed by the core, not by plugins).

``R[i][j]`` is the accuracy on task ``j`` after training task ``i`` (0-based,
``T`` tasks, so ``R`` is ``T x T``; entries with ``j > i`` are tasks not yet
trained). ``b[j]`` is the accuracy on task ``j`` of the model before any
training (used by forward transfer). With ``T`` tasks:

* average accuracy      ``ACC = 1/T * sum_j R[T-1][j]``
* accuracy curve        ``A_i = 1/(i+1) * sum_{j<=i} R[i][j]`` (after each task)
* average incremental accuracy ``1/T * sum_i A_i``
* average forgetting    ``F = 1/(T-1) * sum_{j<T-1} max_{j<=l<T-1} R[l][j] - R[T-1][j]``
  (Chaudhry et al., 2018); the forgetting curve is the same after each task i
* backward transfer     ``BWT = 1/(T-1) * sum_{j<T-1} R[T-1][j] - R[j][j]``
  (Lopez-Paz & Ranzato, 2017)
* forward transfer      ``FWT = 1/(T-1) * sum_{j>=1} R[j-1][j] - b[j]`` (ibid.)

Metrics that need two tasks are ``None`` for a one-task run. Accuracies are
fractions in ``[0, 1]``. :func:`assemble` turns a run's evaluations into its
``metrics.json``.

A client that joins at a later task ``j`` (``join_tasks``) has the matrix of the
tasks it has seen: rows and columns ``j..T-1`` (its ``tasks``), so its average
accuracy, forgetting and transfers are over those tasks only. The mean over clients
is then taken entry by entry over the clients that have the entry.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

Matrix = Sequence[Sequence[float]]


def _check(R: Matrix) -> int:
    T = len(R)
    if T == 0 or any(len(row) != T for row in R):
        raise ValueError(f"accuracy matrix must be square and non-empty, got {len(R)} rows")
    return T


def average_accuracy(R: Matrix) -> float:
    T = _check(R)
    return sum(R[T - 1]) / T


def accuracy_curve(R: Matrix) -> list[float]:
    T = _check(R)
    return [sum(R[i][: i + 1]) / (i + 1) for i in range(T)]


def average_incremental_accuracy(R: Matrix) -> float:
    curve = accuracy_curve(R)
    return sum(curve) / len(curve)


def forgetting_per_task(R: Matrix) -> list[float]:
    T = _check(R)
    return [max(R[step][j] for step in range(j, T - 1)) - R[T - 1][j] for j in range(T - 1)]


def forgetting_curve(R: Matrix) -> list[float | None]:
    """Average forgetting after each task i (over tasks j < i); None after the first."""
    T = _check(R)
    out: list[float | None] = [None]
    for i in range(1, T):
        out.append(sum(max(R[step][j] for step in range(j, i)) - R[i][j]
                       for j in range(i)) / i)
    return out


def average_forgetting(R: Matrix) -> float | None:
    f = forgetting_per_task(R)
    return sum(f) / len(f) if f else None


def backward_transfer(R: Matrix) -> float | None:
    T = _check(R)
    if T < 2:
        return None
    return sum(R[T - 1][j] - R[j][j] for j in range(T - 1)) / (T - 1)


def forward_transfer(R: Matrix, initial: Sequence[float] | None) -> float | None:
    T = _check(R)
    if T < 2 or initial is None:
        return None
    if len(initial) != T:
        raise ValueError(f"initial accuracies must have {T} entries, got {len(initial)}")
    return sum(R[j - 1][j] - initial[j] for j in range(1, T)) / (T - 1)


def summarize(R: Matrix, initial: Sequence[float] | None = None) -> dict:
    """Every metric of one accuracy matrix, as a JSON-able dict."""
    return {
        "accuracy_matrix": [list(map(float, row)) for row in R],
        "initial_accuracy": list(map(float, initial)) if initial is not None else None,
        "average_accuracy": average_accuracy(R),
        "accuracy_curve": accuracy_curve(R),
        "average_incremental_accuracy": average_incremental_accuracy(R),
        "forgetting_per_task": forgetting_per_task(R),
        "forgetting_curve": forgetting_curve(R),
        "average_forgetting": average_forgetting(R),
        "backward_transfer": backward_transfer(R),
        "forward_transfer": forward_transfer(R, initial),
    }


def mean_matrix(matrices: Sequence[Matrix]) -> list[list[float]]:
    """Element-wise mean of equally shaped matrices."""
    n = len(matrices)
    T = len(matrices[0])
    return [[sum(m[i][j] for m in matrices) / n for j in range(T)] for i in range(T)]


def mean_of(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return sum(vals) / len(vals) if vals else None


SCALARS = ("average_accuracy", "average_incremental_accuracy", "average_forgetting",
           "backward_transfer", "forward_transfer")


def across_clients(per_client: Sequence[dict], first_tasks: Sequence[int] | None = None
                   ) -> dict:
    """Mean over clients of each scalar metric, plus the mean accuracy matrix.

    ``first_tasks[i]``: the task client ``i``'s matrix starts at (a late joiner's); the
    mean matrix and curves then cover every task, each entry the mean over the clients
    that have it (``None`` where none has).
    """
    out: dict = {key: mean_of([c[key] for c in per_client]) for key in SCALARS}
    first = list(first_tasks) if first_tasks is not None else [0] * len(per_client)
    if not any(first):
        out["accuracy_matrix"] = mean_matrix([c["accuracy_matrix"] for c in per_client])
        out["accuracy_curve"] = [mean_of(v) for v in zip(
            *(c["accuracy_curve"] for c in per_client), strict=True)]
        out["forgetting_curve"] = [mean_of(v) for v in zip(
            *(c["forgetting_curve"] for c in per_client), strict=True)]
    else:
        T = max(f + len(c["accuracy_matrix"]) for f, c in zip(first, per_client, strict=True))

        def entry(get: Any, i: int, j: int | None = None) -> float | None:
            vals = [get(c, i - f, None if j is None else j - f)
                    for f, c in zip(first, per_client, strict=True)
                    if f <= i and (j is None or f <= j)]
            return mean_of(vals)

        out["accuracy_matrix"] = [[entry(lambda c, a, b: c["accuracy_matrix"][a][b], i, j)
                                   for j in range(T)] for i in range(T)]
        out["accuracy_curve"] = [entry(lambda c, a, _: c["accuracy_curve"][a], i)
                                 for i in range(T)]
        out["forgetting_curve"] = [entry(lambda c, a, _: c["forgetting_curve"][a], i)
                                   for i in range(T)]
    out["clients"] = len(per_client)
    return out


def mean_of_last(ev: Mapping[int, Mapping[str, Sequence[float]]], t: int,
                 join_tasks: Mapping[int, int] | None = None) -> dict[str, float]:
    """Per model, the mean over clients of the accuracy on tasks ``0..t`` (one evaluation);
    with ``join_tasks``, over the clients that have joined, each on the tasks from its own."""
    models = next(iter(ev.values())).keys()
    if not join_tasks or not any(join_tasks.values()):
        return {m: sum(sum(ev[k][m][: t + 1]) / (t + 1) for k in ev) / len(ev) for m in models}
    joined = [k for k in ev if join_tasks.get(k, 0) <= t]
    return {m: sum(sum(ev[k][m][join_tasks.get(k, 0): t + 1]) / (t + 1 - join_tasks.get(k, 0))
                   for k in joined) / len(joined) for m in models}


def participation_record(rows: Sequence[Mapping[str, Any]], fraction: float,
                         join_tasks: Mapping[int, int]) -> dict[str, Any]:
    """Who took part when: per round the ids of the clients asked to train (from the rows:
    every status but ``not-selected`` and ``not-joined``)."""
    rounds: dict[tuple[int, int], list[int]] = {}
    for r in rows:
        key = (int(r["task"]), int(r["round"]))
        rounds.setdefault(key, [])
        if r.get("status") not in ("not-selected", "not-joined"):
            rounds[key].append(int(r["client"]))
    return {
        "fraction": float(fraction),
        "join_tasks": {str(k): int(v) for k, v in sorted(join_tasks.items())},
        "rounds": [{"task": t, "round": r, "clients": sorted(ids)}
                   for (t, r), ids in sorted(rounds.items())],
    }


def assemble(initial: Mapping[int, Any], evals: Sequence[Mapping[int, Any]],
             rows: Sequence[Mapping[str, Any]], failures: Sequence[Any], *, clients: int,
             rounds_per_task: int, class_order: Sequence[int] | None,
             task_classes: Sequence[Sequence[int]] | None, architectures: Mapping[int, str],
             timings: Mapping[str, float], join_tasks: Mapping[int, int] | None = None,
             scenario: str = "class", domains: Sequence[str] = (),
             client_tasks: Mapping[int, Mapping[str, Any]] | None = None,
             participation: float = 1.0) -> dict[str, Any]:
    """A run's ``metrics.json`` from its evaluations (``evals[i][client][model]`` = the
    accuracy on every task after task ``i``; ``initial``: before the first task), its
    per-round rows and its failures. ``join_tasks``: client -> the 0-based task it joined
    at (its matrix starts there). ``class_order`` / ``task_classes`` are ``None`` when
    every client has its own (``client_tasks``). See docs/results-format.md."""
    K, T = clients, len(evals)
    joins = {k: int((join_tasks or {}).get(k, 0)) for k in range(K)}
    models = list(evals[-1][0].keys()) if evals else []
    per_client: dict[str, dict[str, Any]] = {}
    for cid in range(K):
        per_client[str(cid)] = {}
        j0 = joins[cid]
        for m in models:
            matrix = [evals[i][cid][m][j0:] for i in range(j0, T)]
            init = initial.get(cid, {}).get(m)
            summary = summarize(matrix, None if init is None else init[j0:])
            summary["tasks"] = list(range(j0, T))
            per_client[str(cid)][m] = summary
    mean = {m: across_clients([per_client[str(k)][m] for k in range(K)],
                              [joins[k] for k in range(K)]) for m in models}
    return {
        "schema": "fclkit.metrics/1",
        "accuracy_unit": "fraction of test examples classified correctly (0..1)",
        "models": models,
        "tasks": T, "clients": K, "rounds_per_task": rounds_per_task,
        "scenario": scenario,
        "domains": list(domains),
        "class_order": None if class_order is None else list(class_order),
        "task_classes": None if task_classes is None else [list(c) for c in task_classes],
        "client_tasks": {str(k): {"join_task": joins[k], **dict((client_tasks or {}).get(k, {}))}
                         for k in range(K)},
        "participation": participation_record(rows, participation, joins),
        "architectures": {str(k): v for k, v in architectures.items()},
        "mean": mean,
        "per_client": per_client,
        "communication": {
            "bytes_up_total": sum(r["bytes_up"] for r in rows),
            "bytes_down_total": sum(r["bytes_down"] for r in rows),
            "per_client_round": [{k: r[k] for k in ("task", "round", "client", "bytes_up",
                                                    "bytes_down")} for r in rows],
        },
        "timings_seconds": dict(timings),
        "failures": list(failures),
    }
