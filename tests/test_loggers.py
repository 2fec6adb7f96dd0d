"""Metric loggers: TensorBoard by default, any tracker through the ``logger`` kind."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest

import fclkit
from fclkit.errors import ConfigError, UnknownComponentError
from fclkit.interfaces import ExperimentLogger
from fclkit.progress import Reporter
from fclkit.tracking import LoggerSet


class Recorder(ExperimentLogger):
    """Keeps everything it is sent (what a W&B or MLflow logger would forward)."""

    name = "recorder"
    calls: list[tuple[str, Any]] = []

    def start(self, run_dir, config):
        Recorder.calls.append(("start", (run_dir, dict(config))))

    def log_metrics(self, metrics, step):
        Recorder.calls.append(("log", (step, dict(metrics))))

    def finish(self, status):
        Recorder.calls.append(("finish", status))


class Broken(ExperimentLogger):
    name = "broken"

    def log_metrics(self, metrics, step):
        raise ConnectionError("tracking server unreachable")


class Missing(ExperimentLogger):
    name = "missing"

    @classmethod
    def unavailable_reason(cls):
        return "the missing package is not installed: pip install missing"

    def log_metrics(self, metrics, step):  # pragma: no cover - never started
        raise AssertionError


class Warnings(Reporter):
    def __init__(self):
        self.messages: list[str] = []

    def warn(self, message):
        self.messages.append(message)


@pytest.fixture(autouse=True)
def _fresh_recorder():
    Recorder.calls = []


def _scalars(event_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(event_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_is_on_by_default_and_matches_metrics_json(tiny, plain_sgd):
    result = fclkit.run(tiny, components=[plain_sgd])
    scalars = _scalars(result.run_dir / "tensorboard")
    small = result.metrics["mean"]["small"]
    steps = tiny.tasks * tiny.rounds
    assert [s for s, _ in scalars["train/loss"]] == list(range(1, steps + 1))
    assert [s for s, _ in scalars["accuracy/small/seen_tasks"]] == [2, 4]
    for (_, logged), expected in zip(scalars["accuracy/small/seen_tasks"],
                                     small["accuracy_curve"], strict=True):
        assert math.isclose(logged, expected, rel_tol=1e-6)
    assert math.isclose(scalars["final/small/average_accuracy"][0][1],
                        small["average_accuracy"], rel_tol=1e-6)
    assert math.isclose(scalars["forgetting/small"][-1][1], small["average_forgetting"],
                        rel_tol=1e-6, abs_tol=1e-7)
    up = sum(r["bytes_up"] for r in result.metrics["communication"]["per_client_round"]
             if r["task"] == 0 and r["round"] == 0)
    assert scalars["communication/bytes_up"][0] == (1, up)


def test_loggers_none_writes_no_event_files(tiny, plain_sgd):
    result = fclkit.run(tiny.evolve(loggers="none"), components=[plain_sgd])
    assert not (result.run_dir / "tensorboard").exists()


def test_tensorboard_subdir_option_from_the_cli_form(tiny, plain_sgd):
    from fclkit.config import parse_option_pairs

    options = parse_option_pairs(["tensorboard.subdir=tb"], "--logger-opt")
    assert options == {"tensorboard": {"subdir": "tb"}}
    result = fclkit.run(tiny.evolve(loggers="tensorboard", logger_options=options),
                        components=[plain_sgd])
    assert any((result.run_dir / "tb").iterdir())


def test_a_custom_logger_gets_start_every_round_and_finish(tiny, plain_sgd):
    result = fclkit.run(tiny.evolve(loggers="recorder,tensorboard"),
                        components=[plain_sgd, Recorder])
    kinds = [c[0] for c in Recorder.calls]
    assert kinds[0] == "start" and kinds[-1] == "finish" and Recorder.calls[-1][1] == "finished"
    run_dir, config = Recorder.calls[0][1]
    assert run_dir == result.run_dir and config["cl"] == "plain-sgd"
    logged = {k for c in Recorder.calls if c[0] == "log" for k in c[1][1]}
    assert {"train/loss", "accuracy/small/task_2", "final/small/average_accuracy"} <= logged
    import json

    used = json.loads((result.run_dir / "run.json").read_text())["components"]
    assert {"kind": "logger", "name": "recorder"}.items() <= next(
        c for c in used if c["kind"] == "logger" and c["name"] == "recorder").items()


def test_a_failing_logger_is_switched_off_and_the_run_completes(tiny, plain_sgd):
    warnings = Warnings()
    result = fclkit.run(tiny.evolve(loggers="broken,recorder"),
                        components=[plain_sgd, Broken, Recorder], reporter=warnings)
    assert (result.run_dir / "metrics.json").exists()
    assert any("logger 'broken' failed" in m and "tracking server unreachable" in m
               for m in warnings.messages)
    assert Recorder.calls[-1] == ("finish", "finished")  # the other logger went on


def test_a_failed_run_finishes_its_loggers_with_failed(tiny):
    class Crashes(fclkit.ContinualStrategy):
        name = "crashes"

        def train_round(self, task, *, round_info, epochs, extra_losses=()):
            raise RuntimeError("boom")

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    with pytest.raises(fclkit.FclkitError):
        fclkit.run(tiny.evolve(cl="crashes", loggers="recorder"),
                   components=[Crashes, Recorder], reporter=Warnings())
    assert Recorder.calls[-1] == ("finish", "failed")


def test_unknown_unavailable_and_mixed_logger_names_are_clear_errors(tiny, plain_sgd):
    with pytest.raises(UnknownComponentError, match="tensorbord"):
        fclkit.run(tiny.evolve(loggers="tensorbord"), components=[plain_sgd])
    with pytest.raises(ConfigError, match="pip install missing"):
        fclkit.run(tiny.evolve(loggers="missing"), components=[plain_sgd, Missing])
    with pytest.raises(ConfigError, match="cannot be combined"):
        fclkit.run(tiny.evolve(loggers="auto,recorder"), components=[plain_sgd, Recorder])
    with pytest.raises(ConfigError, match="logger_options.depth"):
        fclkit.run(tiny.evolve(logger_options={"depth": 3}), components=[plain_sgd])


def test_auto_skips_a_logger_that_needs_a_folder_when_there_is_none(tiny, plain_sgd):
    warnings = Warnings()
    fclkit.run(tiny, components=[plain_sgd], write_results=False, reporter=warnings)
    assert warnings.messages == []
    fclkit.run(tiny.evolve(loggers="tensorboard"), components=[plain_sgd],
               write_results=False, reporter=warnings)
    assert any("'tensorboard'" in m and "skipped" in m for m in warnings.messages)


def test_replay_sends_what_the_live_loop_sent(tiny, plain_sgd):
    """Engines that run the loop elsewhere (Flower deployment) get the same scalars."""
    result = fclkit.run(tiny.evolve(loggers="recorder", tasks=3, rounds=1),
                        components=[plain_sgd, Recorder])
    live = [c[1] for c in Recorder.calls if c[0] == "log"][:-1]  # without the final scalars
    import csv

    rows = list(csv.DictReader((result.run_dir / "rounds.csv").open()))
    Recorder.calls = []
    LoggerSet([Recorder()]).replay(result.metrics, rows, 1)
    replayed = [c[1] for c in Recorder.calls if c[0] == "log"]

    def merged(calls):
        out: dict[tuple[int, str], float] = {}
        for step, metrics in calls:
            for key, value in metrics.items():
                out[(step, key)] = value
        return out

    a, b = merged(live), merged(replayed)
    assert a.keys() == b.keys() and (3, "forgetting/small") in a
    for key in a:
        assert math.isclose(a[key], b[key], rel_tol=1e-6, abs_tol=1e-9), key


def test_wandb_offline_run_records_the_scalars(tiny, plain_sgd, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    result = fclkit.run(tiny.evolve(loggers="wandb", logger_options={"mode": "offline"}),
                        components=[plain_sgd])
    runs = list((result.run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    # W&B's own record file (protobuf records), written by its service process, which
    # may still be flushing it when run.finish() returns on a busy machine (the
    # process's exit waits for it): give it time
    keys = (b"train/loss", b"accuracy/small/seen_tasks", b"final/small/average_accuracy")
    deadline = time.monotonic() + 60
    while True:
        data = runs[0].read_bytes()
        if all(key in data for key in keys) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for key in keys:
        assert key in data


def test_wandb_online_without_credentials_is_switched_off_with_a_reason(
        tiny, plain_sgd, monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    warnings = Warnings()
    result = fclkit.run(tiny.evolve(loggers="wandb"), components=[plain_sgd],
                        reporter=warnings)
    assert (result.run_dir / "metrics.json").exists()
    assert any("wandb login" in m and "switched off" in m for m in warnings.messages)
