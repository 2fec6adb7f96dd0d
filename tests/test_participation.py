"""Partial participation and late joiners: who trains when, what the others keep, and
what the metrics count -- on real runs of the local engine."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

import fclkit
from fclkit import ConfigError
from fclkit.cli import app
from fclkit.config import load_config
from fclkit.interfaces import Engine
from fclkit.runtime.loop import participants
from fclkit_builtins.fusion.fedavg import FedAvg
from fclkit_builtins.local.engine import LocalExecutor

pytestmark = pytest.mark.usefixtures("one_thread")

runner = CliRunner()
TINY = dict(benchmark="digits", fusion="fedavg", clients=4, tasks=2, rounds=2, epochs=1,
            threads=1, loggers=("none",), checkpoint=False)


def _weights(client):
    state = {f"model.{k}": v.detach().clone() for k, v in client.model.state_dict().items()}
    for k, v in (client.fm_state or {}).items():
        state[f"fm.{k}"] = v.detach().clone()
    return state


def _same(a, b):
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class RecordingExecutor(LocalExecutor):
    """The local executor, recording every client's weights before and after each round."""

    log: list = []

    def fit(self, round_info, downloads):
        before = {cid: _weights(c) for cid, c in self.clients.items()}
        uploads, failures = super().fit(round_info, downloads)
        after = {cid: _weights(c) for cid, c in self.clients.items()}
        RecordingExecutor.log.append((round_info, before, after,
                                      [u.client_id for u in uploads]))
        return uploads, failures


class RecordingEngine(Engine):
    name = "recording-local"
    description = "test engine: the local engine, recording the clients' weights"

    def run(self, host):
        executor = RecordingExecutor(host)
        try:
            host.run_loop(executor)
        finally:
            executor.close()


class RecordingFedAvg(FedAvg):
    name = "recording-fedavg"
    description = "test fusion: FedAvg, recording whose uploads it fuses"
    fused: list = []

    def fuse(self, round_info, uploads, failures):
        RecordingFedAvg.fused.append(sorted(u.client_id for u in uploads))
        return super().fuse(round_info, uploads, failures)


def _recorded_run(**config):
    RecordingExecutor.log = []
    RecordingFedAvg.fused = []
    cfg = fclkit.ExperimentConfig(**{**TINY, "engine": "recording-local",
                                     "fusion": "recording-fedavg", **config})
    result = fclkit.run(cfg, components=[RecordingEngine, RecordingFedAvg],
                        write_results=False)
    return result, RecordingExecutor.log


# ------------------------------------------------------------------ participation


def test_cli_participation_half_trains_half_the_clients(tmp_path):
    res = runner.invoke(app, ["run", "-q", "--participation", "0.5", "--clients", "4",
                              "--tasks", "2", "--rounds", "2", "--epochs", "1",
                              "--fusion", "fedavg", "--threads", "1", "--loggers", "none",
                              "--output", str(tmp_path), "--name", "half"],
                        catch_exceptions=False)
    assert res.exit_code == 0, res.output
    run_dir = tmp_path / "half"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    rounds = metrics["participation"]["rounds"]
    assert metrics["participation"]["fraction"] == 0.5
    assert [(r["task"], r["round"]) for r in rounds] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert all(len(r["clients"]) == 2 for r in rounds)
    config = load_config(run_dir / "config.toml")
    assert [tuple(r["clients"]) for r in rounds] == [participants(config, t, r)
                                                     for t in range(2) for r in range(2)]
    with open(run_dir / "rounds.csv") as fh:
        rows = list(csv.DictReader(fh))
    for r in rounds:
        mine = [row for row in rows if (int(row["task"]), int(row["round"])) ==
                (r["task"], r["round"])]
        trained = sorted(int(row["client"]) for row in mine if row["status"] == "ok")
        assert trained == r["clients"]
        idle = [row for row in mine if int(row["client"]) not in r["clients"]]
        assert len(idle) == 2 and all(row["status"] == "not-selected" and
                                      row["num_examples"] == "0" and row["bytes_up"] == "0"
                                      for row in idle)
    # a download waits for its client: every participant of round 2 receives FedAvg's model
    # of round 1, also one that sat round 1 out; nobody receives anything in round 1
    received = {(int(row["round"]), int(row["client"])): int(row["bytes_down_received"])
                for row in rows if row["task"] == "0"}
    assert all(received[(0, k)] == 0 for k in range(4))
    assert all(received[(1, k)] > 0 for k in rounds[1]["clients"])
    # every client is still evaluated on every task
    assert all(len(metrics["per_client"][k]["small"]["accuracy_matrix"]) == 2
               for k in "0123")


def test_non_participants_keep_their_state_and_fusions_get_only_participants():
    result, log = _recorded_run(participation=0.5, seed=1)
    assert len(log) == 4
    for info, before, after, uploaded in log:
        chosen = set(info.participants)
        assert len(chosen) == 2 and uploaded == sorted(chosen)
        for cid in range(4):
            if cid in chosen:
                assert not _same(before[cid], after[cid]), f"participant {cid} did not train"
            else:
                assert _same(before[cid], after[cid]), f"client {cid} changed while idle"
    assert RecordingFedAvg.fused == [sorted(info.participants) for info, *_ in log]
    # within a task, an idle client starts the next round exactly as it was
    (i0, _, a0, _), (i1, b1, _, _) = log[0], log[1]
    for cid in set(range(4)) - set(i0.participants) - set(i1.participants):
        assert _same(a0[cid], b1[cid])
    # every participant consolidates the task in its own last round of it
    for t in range(2):
        infos = [info for info, *_ in log if info.task == t]
        for cid in range(4):
            mine = [info for info in infos if cid in info.participants]
            lasts = [info.for_client(cid).is_last_round for info in mine]
            assert lasts == [False] * (len(mine) - 1) + [True] * bool(mine)


def test_participation_is_seeded():
    config = fclkit.ExperimentConfig(**TINY, participation=0.5)
    a = [participants(config, t, r) for t in range(5) for r in range(3)]
    assert a == [participants(config, t, r) for t in range(5) for r in range(3)]
    assert len(set(a)) > 1  # not the same clients every round
    other = [participants(config.evolve(seed=7), t, r) for t in range(5) for r in range(3)]
    assert other != a
    assert participants(config.evolve(participation=0.1), 0, 0) != ()  # at least one
    assert participants(config.evolve(participation=1.0), 0, 0) == (0, 1, 2, 3)


# ------------------------------------------------------------------ late joiners


def test_a_late_joiner_trains_from_its_task_and_its_metrics_cover_only_its_tasks():
    result, log = _recorded_run(clients=2, tasks=3, rounds=1, join_tasks=(1, 2))
    m = result.metrics
    assert m["client_tasks"]["1"]["join_task"] == 1
    assert m["participation"]["join_tasks"] == {"0": 0, "1": 1}
    assert [r["clients"] for r in m["participation"]["rounds"]] == [[0], [0, 1], [0, 1]]
    # it did not train in task 1 (index 0): its weights were untouched
    info, before, after, uploaded = log[0]
    assert info.participants == (0,) and uploaded == [0]
    assert _same(before[1], after[1])
    late = m["per_client"]["1"]["small"]
    assert late["tasks"] == [1, 2]
    R = late["accuracy_matrix"]
    assert len(R) == 2 and all(len(row) == 2 for row in R)
    assert late["average_accuracy"] == pytest.approx(sum(R[1]) / 2)
    assert late["average_forgetting"] == pytest.approx(R[0][0] - R[1][0])
    assert len(late["initial_accuracy"]) == 2
    first = m["per_client"]["0"]["small"]
    assert first["tasks"] == [0, 1, 2] and len(first["accuracy_matrix"]) == 3
    # the mean over clients: task 1 (index 0) is client 0's alone; later entries both
    mean = m["mean"]["small"]["accuracy_matrix"]
    assert mean[0] == first["accuracy_matrix"][0]
    assert mean[2][2] == pytest.approx((first["accuracy_matrix"][2][2] + R[1][1]) / 2)
    assert mean[2][0] == first["accuracy_matrix"][2][0]
    assert m["mean"]["small"]["average_accuracy"] == pytest.approx(
        (first["average_accuracy"] + late["average_accuracy"]) / 2)


def test_cli_join_tasks_and_the_rows_of_a_client_not_joined_yet(tmp_path):
    res = runner.invoke(app, ["run", "-q", "--join-tasks", "1,2", "--clients", "2",
                              "--tasks", "2", "--rounds", "1", "--epochs", "1",
                              "--fusion", "fedavg", "--threads", "1", "--loggers", "none",
                              "--output", str(tmp_path), "--name", "late"],
                        catch_exceptions=False)
    assert res.exit_code == 0, res.output
    with open(tmp_path / "late" / "rounds.csv") as fh:
        rows = list(csv.DictReader(fh))
    status = {(r["task"], r["client"]): r["status"] for r in rows}
    assert status == {("0", "0"): "ok", ("0", "1"): "not-joined",
                      ("1", "0"): "ok", ("1", "1"): "ok"}
    metrics = json.loads((tmp_path / "late" / "metrics.json").read_text())
    assert metrics["per_client"]["1"]["small"]["tasks"] == [1]


# ------------------------------------------------------------------ bad values


@pytest.mark.parametrize("changes,match", [
    (dict(participation=0.0), r"participation = 0\.0: must be a number in \(0\.0, 1\.0\]"),
    (dict(participation=1.5), r"participation = 1\.5: must be a number in \(0\.0, 1\.0\]"),
    (dict(join_tasks="1,4", clients=2, tasks=3), "client 1 joins at task 4, but there are "
                                                 "only 3 tasks"),
    (dict(join_tasks="1,2", clients=3), "needs one task per client: 3 entries, not 2"),
    (dict(join_tasks="2,2", clients=2), "no client joins at task 1"),
    (dict(join_tasks="1,x", clients=2), "entry 2 \\(client 1\\) is 'x'"),
    (dict(join_tasks="1,0", clients=2), "entry 2 \\(client 1\\) is 0"),
    (dict(participation=0.5, clients=4, min_clients=3), "only 2 client\\(s\\) train"),
])
def test_bad_participation_settings_are_one_clear_line(changes, match):
    with pytest.raises(ConfigError, match=match):
        fclkit.ExperimentConfig(**changes)


def test_cli_refuses_participation_zero_in_one_line(tmp_path):
    res = runner.invoke(app, ["run", "-q", "--participation", "0", "--output", str(tmp_path)])
    assert res.exit_code == 1
    assert "invalid participation = 0.0" in res.output and "Traceback" not in res.output


def test_an_engine_that_ignores_participants_is_stopped():
    class TrainEveryone(LocalExecutor):
        def fit(self, round_info, downloads):
            import attrs

            return super().fit(attrs.evolve(round_info, participants=None), downloads)

    class EveryoneEngine(Engine):
        name = "everyone"
        description = "test engine: trains every client whatever the round's participants"

        def run(self, host):
            host.run_loop(TrainEveryone(host))

    config = fclkit.ExperimentConfig(**{**TINY, "engine": "everyone"}, participation=0.5)
    with pytest.raises(fclkit.FclkitError, match="ignores RoundInfo.participants"):
        fclkit.run(config, components=[EveryoneEngine], write_results=False)


# ------------------------------------------------------------------ the flower engine


def test_flower_executor_trains_only_the_participants_like_local():
    pytest.importorskip("flwr")
    from test_flower_engine import InProcessFlower

    import fclkit_builtins.flower

    config = fclkit.ExperimentConfig(**{**TINY, "clients": 3, "tasks": 2},
                                     participation=0.67, join_tasks=(1, 1, 2), cl="ewc")
    local = fclkit.run(config, write_results=False)
    flower = fclkit.run(config.evolve(engine="test-flower-inprocess"),
                        plugins=[fclkit_builtins.flower], components=[InProcessFlower],
                        write_results=False)
    assert flower.metrics["per_client"] == local.metrics["per_client"]
    assert flower.metrics["participation"] == local.metrics["participation"]
    trained = [(m.metadata.group_id, m.metadata.dst_node_id - 100)
               for m in InProcessFlower.last_grid.sent if m.metadata.message_type == "train"]
    expected = [(f"task{r['task']}-round{r['round']}", k)
                for r in local.metrics["participation"]["rounds"] for k in r["clients"]]
    assert sorted(trained) == sorted(expected)
    assert len(trained) < 3 * 2 * 2  # fewer train messages than clients x rounds


class CrashOnceFedAvg(FedAvg):
    name = "crash-once-fedavg"
    description = "test fusion: FedAvg whose server crashes once, in task 2"
    armed = True

    def fuse(self, round_info, uploads, failures):
        if round_info.task == 1 and round_info.round == 1 and CrashOnceFedAvg.armed:
            CrashOnceFedAvg.armed = False
            raise RuntimeError("server crashed")
        return super().fuse(round_info, uploads, failures)


def test_a_resumed_run_keeps_who_takes_part_and_the_waiting_downloads(tmp_path):
    config = fclkit.ExperimentConfig(**{**TINY, "checkpoint": True, "rounds": 3,
                                        "fusion": "crash-once-fedavg"}, participation=0.5,
                                     join_tasks=(1, 1, 2, 1), output=str(tmp_path),
                                     name="crashed")
    CrashOnceFedAvg.armed = True
    with pytest.raises(RuntimeError, match="server crashed"):
        fclkit.run(config, components=[CrashOnceFedAvg])
    resumed = fclkit.run(None, resume=tmp_path / "crashed", components=[CrashOnceFedAvg])
    clean = fclkit.run(config.evolve(name="clean"), components=[CrashOnceFedAvg])
    assert resumed.metrics["per_client"] == clean.metrics["per_client"]
    assert resumed.metrics["participation"] == clean.metrics["participation"]
