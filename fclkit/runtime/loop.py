"""The task/round loop, the same for every engine, with its checkpoints.

An engine only decides *where* clients run, through a
:class:`~fclkit.interfaces.ClientExecutor`::

    evaluate every client before training (for forward transfer)
    for each task t:
        for each round r:
            participants: the clients that have joined by task t, a ``participation``
                     fraction of them sampled under (seed, t, r)
            clients: each participant applies its latest download, trains round r of
                     task t, uploads
            core:    validate every upload (a rejected one is a failure)
            server:  fusion -> downloads (+ global FM part)
            checkpoint
        clients: every client that has joined applies its latest download; every model
                 is evaluated on every task

A download waits for its client: a client that does not take part in a round
receives nothing, uploads nothing and keeps its state (small model, strategy, FM
part) unchanged; it applies the latest download the server addressed to it when it
next trains, or at the end of the task's evaluation. A late joiner is trained from
the task it joins at (``join_tasks``), and its metrics cover only its tasks.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import attrs

from ..config import round_participants
from ..errors import ConfigError, FclkitError
from ..interfaces import ClientExecutor
from ..messages import Download, Failure, FusionResult, RoundInfo, Upload
from ..metrics import assemble, mean_of_last
from ..tracking import round_scalars, task_scalars
from .seeding import derive_seed

#: ``rounds.csv`` status of a client that has joined and was not sampled for the round
NOT_SELECTED = "not-selected"
#: ``rounds.csv`` status of a client before the task it joins at
NOT_JOINED = "not-joined"


def participants(config: Any, task: int, round: int) -> tuple[int, ...]:
    """The ids of the clients that train in ``round`` of ``task`` (0-based): those that have
    joined by then, a ``participation`` fraction of them sampled under the seed."""
    joins = config.join_task_of()
    joined = [k for k in range(config.clients) if joins[k] <= task]
    n = round_participants(config.participation, len(joined))
    if n >= len(joined):
        return tuple(joined)
    import random

    rng = random.Random(derive_seed(config.seed, "participants", task, round))
    return tuple(sorted(rng.sample(joined, n)))


def closing_clients(config: Any, task: int, round: int, chosen: tuple[int, ...]
                    ) -> tuple[int, ...] | None:
    """The participants of ``round`` that train in no later round of ``task``: their last
    round of the task, where their strategy consolidates it. None when every client that
    has joined trains in every round (the task's last round closes it for all)."""
    if config.participation >= 1.0:
        return None
    later = {k for r in range(round + 1, config.rounds) for k in participants(config, task, r)}
    return tuple(k for k in chosen if k not in later)


def check_stream(stream: Any, spec: Any, benchmark: str) -> None:
    """The stream a benchmark built is the one the run asked for: a benchmark that cuts its
    data without :mod:`fclkit.partition` may not know every scenario."""
    if getattr(stream, "scenario", "class") != spec.scenario:
        raise ConfigError("scenario", spec.scenario,
                          f"benchmark {benchmark!r} cannot make {spec.scenario}-incremental "
                          f"tasks (it built {getattr(stream, 'scenario', 'class')}-incremental "
                          "ones)", hint="--scenario class, or a benchmark that cuts its data "
                          "with fclkit.partition (digits, mnist, imagefolder, text-file, "
                          "hf-dataset, ...)")
    if spec.class_order == "per-client" and any(not c.class_order for c in stream.clients):
        raise ConfigError("class_order", spec.class_order,
                          f"benchmark {benchmark!r} does not give the clients their own class "
                          "orders", hint="--class-order shared")
    if spec.partition == "quantity":
        import torch

        for client in stream.clients:
            for task in client.tasks:
                held = len(torch.unique(task.y_train))
                if held > spec.classes_per_client:
                    raise ConfigError(
                        "partition", spec.partition,
                        f"benchmark {benchmark!r} did not apply it: client "
                        f"{client.client_id} holds {held} classes of task {task.task_id + 1} "
                        f"(classes_per_client = {spec.classes_per_client})",
                        hint="--partition iid or dirichlet")

if TYPE_CHECKING:
    from .experiment import Experiment


@attrs.define
class LoopState:
    """What the run loop accumulates (all of it goes into checkpoints)."""

    initial: dict[int, Any] = attrs.field(factory=dict)
    evals: list[dict[int, Any]] = attrs.field(factory=list)
    rows: list[dict[str, Any]] = attrs.field(factory=list)
    failures: list[dict[str, Any]] = attrs.field(factory=list)
    pending: dict[int, Download] = attrs.field(factory=dict)


def _keys_to_str(d: dict) -> dict:
    return {str(k): v for k, v in d.items()}


def _keys_to_int(d: dict) -> dict:
    return {int(k): v for k, v in d.items()}


class TaskRoundLoop:
    """Runs an :class:`~fclkit.runtime.experiment.Experiment`'s tasks and rounds."""

    def __init__(self, experiment: Experiment) -> None:
        self.experiment = experiment
        self.state = LoopState()
        self._backbone_from = self._backbone_base = 0.0  # FM backbone seconds (see run)

    def run(self, executor: ClientExecutor) -> dict[str, Any]:
        """Every task and round through ``executor``; returns the metrics.

        Continues from ``experiment.resume_state`` (a loaded checkpoint) when it is set.
        """
        e = self.experiment
        if e.server is None:
            raise RuntimeError("Experiment.prepare() must be called before run_loop()")
        c = e.config
        T, R, K = e.stream.num_tasks, c.rounds, c.clients
        rep, timings, loop = e.reporter, e.timings, self.state
        for key in ("client_train", "fusion", "evaluation"):
            timings.setdefault(key, 0.0)
        start = 0  # index of the first (task, round) step to run
        rep.run_started(T, R, K)
        self._backbone_from = self._backbone_seconds()
        if e.resume_state is not None:
            start = self._restore(e.resume_state, executor)
            rep.phase(f"resumed after task {start // R + 1 if start % R else start // R}, "
                      f"round {R if start % R == 0 else start % R}")
        else:
            t0 = time.perf_counter()
            loop.initial = executor.evaluate(-1, {}, e.server.global_fm())
            timings["evaluation"] += time.perf_counter() - t0
        self._backbone_base = timings.get("backbone", 0.0)  # a resumed run's so far

        if start == 0:  # from fclkit.run's start (or the Experiment's) to the first round
            timings["to_first_round"] = time.perf_counter() - e.created
        joins = c.join_task_of()
        for step in range(start, T * R):
            t, r = divmod(step, R)
            chosen = participants(c, t, r)
            info = RoundInfo(task=t, round=r, rounds_per_task=R, participants=chosen,
                             closing=closing_clients(c, t, r, chosen))
            rep.round_started(t, r)
            # each participant gets the latest download addressed to it; the others' wait
            delivered = {cid: loop.pending.pop(cid, None) for cid in chosen}
            t0 = time.perf_counter()
            uploads, fails = executor.fit(info, {k: d for k, d in delivered.items()
                                                 if d is not None})
            timings["client_train"] += time.perf_counter() - t0
            self._only_participants(uploads, fails, chosen)
            accepted = self._validate(uploads, fails, info)
            t0 = time.perf_counter()
            result = e.server.aggregate(info, accepted, fails)
            fusion_seconds = time.perf_counter() - t0
            timings["fusion"] += fusion_seconds
            self._record_round(info, uploads, accepted, delivered, result, fusion_seconds)
            e.loggers.log(round_scalars(loop.rows[-K:]), step + 1)
            loop.pending.update(result.downloads)
            rep.round_done(t, r)
            if info.is_last_round:
                joined = [k for k in range(K) if joins[k] <= t]
                t0 = time.perf_counter()
                applied = {k: loop.pending.pop(k) for k in joined if k in loop.pending}
                loop.evals.append(executor.evaluate(t, applied, e.server.global_fm()))
                timings["evaluation"] += time.perf_counter() - t0
                rep.task_done(t, mean_of_last(loop.evals[-1], t, joins))
                e.loggers.log(task_scalars(
                    {cid: {m: [ev[cid][m] for ev in loop.evals[joins[cid]:]]
                           for m in loop.evals[-1][cid]}
                     for cid in loop.evals[-1] if joins.get(cid, 0) <= t},
                    first_task={cid: joins[cid] for cid in joins}), step + 1)
            self._sync_feature_cache()
            self._checkpoint(executor, info, step)
        self._sync_feature_cache()
        stream = e.stream
        shared = [list(tc) for tc in stream.task_classes] or (
            [list(t.classes) for t in stream.clients[0].tasks] if stream.class_order else None)
        return assemble(loop.initial, loop.evals, loop.rows, loop.failures, clients=K,
                        rounds_per_task=R,
                        class_order=list(stream.class_order) if stream.class_order else None,
                        task_classes=shared,
                        architectures=e.architectures, timings=timings, join_tasks=joins,
                        scenario=getattr(stream, "scenario", "class"),
                        domains=list(getattr(stream, "domains", ())),
                        client_tasks={cs.client_id: {
                            "class_order": list(cs.class_order or stream.class_order),
                            "task_classes": [list(task.classes) for task in cs.tasks]}
                            for cs in stream.clients},
                        participation=c.participation)

    def _only_participants(self, uploads: list[Upload], fails: list[Failure],
                           chosen: tuple[int, ...]) -> None:
        """An engine that trained a client outside the round's participants cannot honour
        ``participation`` or ``join_tasks``: stop with one line rather than record it."""
        allowed = set(chosen)
        extra = sorted(({u.client_id for u in uploads} | {f.client_id for f in fails})
                       - allowed)
        if extra:
            raise FclkitError(
                f"engine {self.experiment.config.engine!r} ran client(s) "
                f"{', '.join(map(str, extra))}, which do not take part in this round "
                f"(participants: {', '.join(map(str, chosen))}): it ignores "
                "RoundInfo.participants",
                hint="use --engine local, or participation = 1 and no join_tasks")

    def _backbone_seconds(self) -> float:
        return float(getattr(self.experiment.foundation_model, "backbone_seconds", 0.0) or 0.0)

    def _sync_feature_cache(self) -> None:
        """``timings["backbone"]``: this process's FM backbone time (plus a resumed run's);
        and the features computed so far written to the disk cache."""
        e = self.experiment
        if e.foundation_model is None or not hasattr(e.foundation_model, "backbone_seconds"):
            return
        e.timings["backbone"] = (self._backbone_base + self._backbone_seconds()
                                 - self._backbone_from)
        flush = getattr(e.foundation_model, "flush_cache", None)
        if flush is not None:
            flush()

    def _validate(self, uploads: list[Upload], fails: list[Failure], info: RoundInfo
                  ) -> list[Upload]:
        """The uploads the core accepts; every rejection and failure recorded and reported.

        The core validates every upload, whatever the engine's clients checked themselves
        (a remote node is not trusted). Fewer accepted than ``min_clients`` stops the run.
        """
        e, loop = self.experiment, self.state
        accepted = []
        for u in uploads:
            reason = e.validator.check(u)
            if reason is None:
                accepted.append(u)
            else:
                fails.append(Failure(u.client_id, f"rejected update: {reason}"))
        for f in fails:
            loop.failures.append({"task": info.task, "round": info.round,
                                  "client": f.client_id, "reason": f.reason})
            e.reporter.warn(f"client {f.client_id} failed in task {info.task + 1} round "
                            f"{info.round + 1}: {f.reason}")
        if len(accepted) < e.config.min_clients:
            cause = next((f.error for f in fails if f.error is not None), None)
            asked = (len(info.participants) if info.participants is not None
                     else e.config.clients)
            raise FclkitError(
                f"only {len(accepted)} of {asked} clients delivered a valid update "
                f"in task {info.task + 1}, round {info.round + 1} (min_clients = "
                f"{e.config.min_clients}): "
                + "; ".join(f"client {f.client_id}: {f.reason}" for f in fails),
                hint="rerun with --debug for the traceback; the run can be continued "
                "with --resume after a fix",
            ) from cause
        return accepted

    def _record_round(self, info: RoundInfo, uploads: list[Upload], accepted: list[Upload],
                      delivered: dict[int, Download | None], result: FusionResult,
                      fusion_seconds: float) -> None:
        e = self.experiment
        by_client = {u.client_id: u for u in uploads}
        ok = {u.client_id for u in accepted}
        joins = e.config.join_task_of()
        for cid in range(e.config.clients):
            u = by_client.get(cid)
            d_in = delivered.get(cid)
            d_out = result.downloads.get(cid)
            if cid not in delivered:
                status = NOT_JOINED if joins[cid] > info.task else NOT_SELECTED
            else:
                status = "ok" if cid in ok else ("rejected" if u is not None else "failed")
            self.state.rows.append({
                "task": info.task, "round": info.round, "client": cid,
                "status": status,
                "architecture": e.architectures[cid],
                "num_examples": u.num_examples if u else 0,
                "train_loss": u.metadata.get("train_loss") if u else None,
                "train_seconds": u.metadata.get("train_seconds") if u else None,
                "bytes_up": u.nbytes if u else 0,
                "bytes_down": d_out.nbytes if d_out is not None else 0,
                "bytes_down_received": d_in.nbytes if d_in is not None else 0,
                "fusion_seconds": fusion_seconds,
            })

    # ---------------------------------------------------------- checkpoints

    def _checkpoint(self, executor: ClientExecutor, info: RoundInfo, step: int) -> None:
        e, loop = self.experiment, self.state
        if e.run_dir is None or not e.config.checkpoint:
            return
        client_states = executor.client_states()
        if client_states is None:  # this engine keeps client state where we cannot see it
            return
        import torch

        from ..checkpoint import rng_state, save_checkpoint

        state = {
            "step": step, "task": info.task, "round": info.round,
            "server": e.server.state_dict() if e.server else {},
            "clients": {str(k): v for k, v in client_states.items()},
            "pending": {str(k): d.to_state() for k, d in loop.pending.items()},
            "initial": _keys_to_str(loop.initial),
            "evals": [_keys_to_str(ev) for ev in loop.evals],
            "rows": loop.rows, "failures": loop.failures,
            "timings": dict(e.timings), "rng": rng_state(),
            # what the run computes with: a resume at threads = 0 continues with it
            "torch_threads": torch.get_num_threads(),
        }
        save_checkpoint(e.run_dir, state, task=info.task, round=info.round, step=step)

    def _restore(self, state: dict[str, Any], executor: ClientExecutor) -> int:
        from ..checkpoint import set_rng_state

        e, loop = self.experiment, self.state
        if e.server is not None:
            e.server.load_state_dict(state["server"])
        executor.load_client_states({int(k): v for k, v in state["clients"].items()})
        pending = {int(k): Download.from_state(v) for k, v in state["pending"].items()}
        loop.pending = {k: d for k, d in pending.items() if d is not None}
        loop.initial = _keys_to_int(state["initial"])
        loop.evals = [_keys_to_int(ev) for ev in state["evals"]]
        loop.rows = list(state["rows"])
        loop.failures = list(state["failures"])
        for key, value in state["timings"].items():
            e.timings[key] = value
        set_rng_state(state["rng"])
        return int(state["step"]) + 1

    def partial_metrics(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """What is known so far (written when a run stops early, so nothing is lost)."""
        loop = self.state
        return {"schema": "fclkit.metrics/1", "complete": False,
                "tasks_evaluated": len(loop.evals),
                "evaluations": [_keys_to_str(ev) for ev in loop.evals],
                "failures": loop.failures,
                "timings_seconds": dict(self.experiment.timings)}, loop.rows
