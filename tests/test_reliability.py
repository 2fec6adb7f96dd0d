"""Nothing is lost, nothing untrusted executes: resume, faults, validation, safe loading."""

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import PlainSGD
from typer.testing import CliRunner

import fclkit
from fclkit.cli import app
from fclkit.messages import Upload
from fclkit.validation import UpdateValidator

runner = CliRunner()


def _cli(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


# ------------------------------------------------------------- kill and resume


def test_sigkill_mid_task_then_resume_gives_the_same_accuracies(tmp_path):
    cfg = tmp_path / "exp.toml"
    cfg.write_text('cl = "ewc"\nclients = 2\ntasks = 3\nrounds = 3\nepochs = 3\n'
                   f'output = "{tmp_path}"\nname = "killed"\n')
    run_dir = tmp_path / "killed"
    latest = run_dir / "checkpoint" / "latest.json"
    proc = subprocess.Popen([sys.executable, "-m", "fclkit.cli", "run", "-q", "--config",
                             str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    step = -1
    while time.time() < deadline and proc.poll() is None:
        try:
            step = json.loads(latest.read_text())["step"]
        except (FileNotFoundError, ValueError):
            pass
        if step >= 4:  # task 2, round 2 done: kill in the middle of task 2
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed: " + str(
        proc.stderr.read())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running"
    assert not (run_dir / "metrics.json").exists()

    res = _cli("run", "-q", "--resume", run_dir)
    assert res.exit_code == 0, res.output
    resumed = json.loads((run_dir / "metrics.json").read_text())
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished" and len(info["resumed"]) == 1

    clean = fclkit.run(fclkit.load_config(cfg).evolve(name="clean"))
    assert resumed["per_client"] == clean.metrics["per_client"]
    assert len(resumed["communication"]["per_client_round"]) == 2 * 3 * 3


def test_resume_refuses_extra_options(tmp_path):
    res = _cli("run", "--resume", tmp_path, "--clients", "4")
    assert res.exit_code == 1 and "cannot be combined with clients" in res.output


def _finished_run(tmp_path, name="done"):
    return fclkit.run(fclkit.ExperimentConfig(cl="plain-sgd", clients=2, tasks=2, rounds=1,
                                              epochs=1, output=str(tmp_path), name=name),
                      components=[PlainSGD]).run_dir


# ------------------------------------------------------------------ safe loading


class _Trap:
    """Unpickling this creates a file: proof that code from the file was executed."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_pickle_offered_as_checkpoint_is_refused_without_executing(tmp_path, writer):
    run_dir = _finished_run(tmp_path)
    marker = tmp_path / "executed"
    (ckpt,) = (run_dir / "checkpoint").glob("*.safetensors")
    payload = {"format": "fclkit.checkpoint/1", "trap": _Trap(str(marker))}
    with open(ckpt, "wb") as fh:
        if writer == "pickle":
            pickle.dump(payload, fh)
        else:
            torch.save(payload, fh)
    res = _cli("run", "-q", "--resume", run_dir)
    assert res.exit_code == 1
    text = " ".join(res.output.split())
    assert str(ckpt) in text and "damaged or not a safetensors file" in text
    assert not marker.exists()


def test_truncated_checkpoint_names_the_file(tmp_path):
    run_dir = _finished_run(tmp_path)
    (ckpt,) = (run_dir / "checkpoint").glob("*.safetensors")
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    res = _cli("run", "-q", "--resume", run_dir)
    assert res.exit_code == 1 and str(ckpt) in " ".join(res.output.split())


def test_tampered_skeleton_names_the_file(tmp_path):
    run_dir = _finished_run(tmp_path)
    (meta,) = (run_dir / "checkpoint").glob("round-*.json")
    meta.write_text("{not json")
    res = _cli("run", "-q", "--resume", run_dir)
    assert res.exit_code == 1 and str(meta) in " ".join(res.output.split())


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    run_dir = fclkit.run(fclkit.ExperimentConfig(
        cl="plain-sgd", clients=2, tasks=2, rounds=1, epochs=1, checkpoint=False,
        output=str(tmp_path), name="nockpt"), components=[PlainSGD]).run_dir
    res = _cli("run", "-q", "--resume", run_dir)
    assert res.exit_code == 1 and "has no checkpoint" in res.output


# ----------------------------------------------------------------- client faults


class Faulty(PlainSGD):
    """Client 1 raises every other round; client 2 uploads NaN weights; client 3 is slow."""

    name = "faulty"
    built = 0

    def __init__(self, model, options, context):
        super().__init__(model, options, context)
        self.index = type(self).built % 4
        type(self).built += 1

    def train_round(self, task, *, round_info, **kw):
        step = task.task_id * round_info.rounds_per_task + round_info.round
        if self.index == 1 and step % 2 == 1:
            raise RuntimeError("GPU fell off the bus")
        if self.index == 3 and self.slow:
            time.sleep(1.5)
        report = super().train_round(task, round_info=round_info, **kw)
        if self.index == 2:
            with torch.no_grad():
                for p in self.model.parameters():
                    p.fill_(float("nan"))
        return report

    slow = False


def _faulty_config(tmp_path, **changes):
    fields = {"cl": "faulty", "clients": 4, "tasks": 2, "rounds": 2, "epochs": 1,
              "fusion": "isolated", "output": str(tmp_path), **changes}
    return fclkit.ExperimentConfig(**fields)


def test_raising_and_nan_clients_are_recorded_and_others_unaffected(tmp_path):
    Faulty.built = 0
    result = fclkit.run(_faulty_config(tmp_path), components=[Faulty])
    failures = result.metrics["failures"]
    raised = [f for f in failures if f["client"] == 1]
    nan = [f for f in failures if f["client"] == 2]
    assert len(raised) == 2 and all("GPU fell off the bus" in f["reason"] for f in raised)
    assert len(nan) == 4 and all("non-finite" in f["reason"] for f in nan)
    assert {f["client"] for f in failures} == {1, 2}
    # client 1 took part again in the rounds between its failures
    ok = [r for r in result.metrics["communication"]["per_client_round"] if r["client"] == 1]
    assert sum(r["bytes_up"] > 0 for r in ok) == 2

    clean = fclkit.run(_faulty_config(tmp_path).evolve(cl="plain-sgd"),
                       components=[PlainSGD], write_results=False)
    for cid in ("0", "3"):
        assert (result.metrics["per_client"][cid]["small"]["accuracy_matrix"]
                == clean.metrics["per_client"][cid]["small"]["accuracy_matrix"])
    rows = (result.run_dir / "rounds.csv").read_text()
    assert ",rejected," in rows and ",failed," in rows


class DivergesOnce(PlainSGD):
    """Client 0's weights become NaN in the first round only (as a too-large step would)."""

    name = "diverges-once"

    def train_round(self, task, *, round_info, **kw):
        report = super().train_round(task, round_info=round_info, **kw)
        self.rounds = getattr(self, "rounds", 0) + 1
        first_client = not hasattr(DivergesOnce, "seen")
        DivergesOnce.seen = True
        if first_client and self.rounds == 1:
            with torch.no_grad():
                for p in self.model.parameters():
                    p.fill_(float("nan"))
        return report


def test_a_rejected_client_is_rolled_back_and_recovers(tmp_path):
    if hasattr(DivergesOnce, "seen"):
        del DivergesOnce.seen
    result = fclkit.run(_faulty_config(tmp_path, cl="diverges-once", clients=2),
                        components=[DivergesOnce], write_results=False)
    failures = result.metrics["failures"]
    assert [(f["client"], f["task"], f["round"]) for f in failures] == [(0, 0, 0)]
    assert "non-finite" in failures[0]["reason"]
    m = result.metrics["per_client"]["0"]["small"]["accuracy_matrix"]
    assert m[1][1] > 0.3  # without the roll-back it would stay NaN (chance or zero)


def test_fedavg_never_fuses_nan_weights(tmp_path):
    Faulty.built = 0
    result = fclkit.run(_faulty_config(tmp_path, fusion="fedavg"), components=[Faulty],
                        write_results=False)
    m = result.metrics["per_client"]["0"]["small"]
    diagonal = [m["accuracy_matrix"][t][t] for t in range(2)]
    assert all(v > 0.3 for v in diagonal)  # NaN weights would give chance (or zero)
    assert m["average_accuracy"] == m["average_accuracy"]


def test_slow_client_is_cut_off_and_rolled_back(tmp_path):
    Faulty.built = 0
    Faulty.slow = True
    try:
        result = fclkit.run(_faulty_config(tmp_path, client_timeout=1.0),
                            components=[Faulty], write_results=False)
    finally:
        Faulty.slow = False
    slow = [f for f in result.metrics["failures"] if f["client"] == 3]
    assert len(slow) == 4 and all("exceeded the time limit of 1s" in f["reason"]
                                  for f in slow)
    m = result.metrics["per_client"]["3"]["small"]
    assert all(row == m["initial_accuracy"] for row in m["accuracy_matrix"])  # rolled back


def test_too_few_valid_updates_stops_and_keeps_partial_results(tmp_path):
    Faulty.built = 0
    with pytest.raises(fclkit.FclkitError, match=r"only 2 of 4 clients .*min_clients = 3"):
        fclkit.run(_faulty_config(tmp_path, min_clients=3, name="few"), components=[Faulty])
    info = json.loads((tmp_path / "few" / "run.json").read_text())
    assert info["status"] == "failed"
    assert json.loads((tmp_path / "few" / "metrics.json").read_text())["complete"] is False


# ------------------------------------------------------------- update validation


@pytest.fixture
def validator():
    def build(arch):
        return torch.nn.Sequential(torch.nn.Linear(4, 3))

    return UpdateValidator({0: "mlp", 1: "cnn"}, build, max_examples=1000)


def _upload(**changes):
    state = {"0.weight": torch.zeros(3, 4), "0.bias": torch.zeros(3)}
    fields = {"client_id": 0, "architecture": "mlp", "classes_seen": (0,), "num_examples": 10,
              "small_state": state}
    fields.update(changes)
    return Upload(**fields)


@pytest.mark.parametrize("changes,reason", [
    ({}, None),
    ({"architecture": "cnn"}, "differs from the declared 'mlp'"),
    ({"client_id": 7}, "unknown client id 7"),
    ({"num_examples": 0}, "absurd example count 0"),
    ({"num_examples": 10**9}, "absurd example count"),
    ({"num_examples": 2.5}, "absurd example count"),
    ({"small_state": {"0.weight": torch.zeros(3, 5), "0.bias": torch.zeros(3)}},
     "has shape (3, 5), expected (3, 4)"),
    ({"small_state": {"0.weight": torch.zeros(3, 4, dtype=torch.float64),
                      "0.bias": torch.zeros(3)}}, "dtype torch.float64"),
    ({"small_state": {"0.weight": torch.full((3, 4), float("inf")), "0.bias": torch.zeros(3)}},
     "non-finite"),
    ({"small_state": {"0.weight": torch.zeros(3, 4)}}, "missing tensors ['0.bias']"),
    ({"small_state": {"0.weight": torch.zeros(3, 4), "0.bias": torch.zeros(3),
                      "evil": torch.zeros(1)}}, "unexpected tensors ['evil']"),
    ({"small_state": {"0.weight": [[0.0] * 4] * 3, "0.bias": torch.zeros(3)}}, "not a tensor"),
])
def test_validation_rejects_with_a_reason(validator, changes, reason):
    got = validator.check(_upload(**changes))
    if reason is None:
        assert got is None
    else:
        assert reason in got


def test_atomic_write_leaves_old_file_when_interrupted(tmp_path, monkeypatch):
    from fclkit import serialization

    path = tmp_path / "metrics.json"
    serialization.atomic_write_text(path, '{"old": true}')

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        serialization.atomic_write_text(path, '{"new": tr')
    assert json.loads(path.read_text()) == {"old": True}
    assert Path(path).read_text() == '{"old": true}'


class _ThreadsSeen(PlainSGD):
    """Plain SGD that records the torch thread count it trains with; raises
    KeyboardInterrupt (as Ctrl-C would) in the round numbered ``stop_at``."""

    name = "threads-seen"
    seen: list[int] = []
    calls = 0
    stop_at = -1

    def train_round(self, task, **kwargs):
        type(self).calls += 1
        if type(self).calls == type(self).stop_at:
            raise KeyboardInterrupt
        type(self).seen.append(torch.get_num_threads())
        return super().train_round(task, **kwargs)


def test_a_resume_at_threads_0_computes_with_the_interrupted_runs_thread_count(tmp_path):
    """Float results depend on torch's thread count: with ``threads = 0`` (torch's default)
    a resume continues with the count the run computed with, whatever the resuming
    process's default, and leaves the process's own as it was."""
    config = fclkit.ExperimentConfig(cl="threads-seen", fusion="fedavg", clients=1, tasks=2,
                                     rounds=2, epochs=1, threads=0, loggers="none",
                                     output=str(tmp_path), name="t")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        _ThreadsSeen.seen, _ThreadsSeen.calls, _ThreadsSeen.stop_at = [], 0, 3
        with pytest.raises(KeyboardInterrupt):
            fclkit.run(config, components=[_ThreadsSeen])
        assert _ThreadsSeen.seen == [3, 3]
        torch.set_num_threads(1)  # the resuming process has another default
        _ThreadsSeen.seen, _ThreadsSeen.stop_at = [], -1
        fclkit.run(None, resume=tmp_path / "t", components=[_ThreadsSeen])
        assert _ThreadsSeen.seen == [3, 3]  # rounds 3 and 4, at the interrupted run's count
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
