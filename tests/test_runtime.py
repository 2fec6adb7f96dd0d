"""The experiment loop on the local engine, with a plain-PyTorch research strategy."""

import csv
import json
import tomllib

import pytest

import fclkit
from fclkit import IncompatibleComponentsError
from fclkit.interfaces import KnowledgeFusion
from fclkit.messages import FusionResult


def test_run_writes_a_complete_results_folder(tiny, plain_sgd):
    result = fclkit.run(tiny, components=[plain_sgd])
    run_dir = result.run_dir
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "checkpoint", "config.toml", "metrics.json", "rounds.csv", "run.json", "tensorboard"]
    saved = tomllib.loads((run_dir / "config.toml").read_text())
    # 'auto' resolved: no FM for fedavg, digits' default small model
    assert fclkit.ExperimentConfig(**saved) == tiny.evolve(fm="none", client_models=("mlp",))
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished" and info["seed"] == 0
    assert info["versions"]["fclkit"] == fclkit.__version__
    assert {c["name"] for c in info["components"]} >= {"plain-sgd", "fedavg", "digits", "mlp"}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["complete"] is True and metrics["models"] == ["small"]
    R = metrics["per_client"]["0"]["small"]["accuracy_matrix"]
    assert len(R) == 2 and all(len(row) == 2 for row in R)
    assert all(0.0 <= v <= 1.0 for row in R for v in row)
    with open(run_dir / "rounds.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * 2 * 2  # tasks x rounds x clients
    assert all(int(r["bytes_up"]) > 0 and int(r["bytes_down"]) > 0 for r in rows)
    t = metrics["timings_seconds"]
    assert set(t) >= {"setup", "to_first_round", "client_train", "fusion", "evaluation", "total"}
    assert t["setup"] <= t["to_first_round"] <= t["total"]


def test_same_seed_gives_identical_accuracies(tiny, plain_sgd):
    a = fclkit.run(tiny, components=[plain_sgd], write_results=False)
    b = fclkit.run(tiny, components=[plain_sgd], write_results=False)
    assert a.metrics["per_client"] == b.metrics["per_client"]
    c = fclkit.run(tiny.evolve(seed=1), components=[plain_sgd], write_results=False)
    assert c.metrics["per_client"] != a.metrics["per_client"]


def test_fedavg_sends_every_client_the_same_model(tiny, plain_sgd):
    result = fclkit.run(tiny, components=[plain_sgd], write_results=False)
    per = result.metrics["per_client"]
    assert per["0"]["small"]["accuracy_matrix"] == per["1"]["small"]["accuracy_matrix"]


def test_isolated_clients_differ(tiny, plain_sgd):
    result = fclkit.run(tiny.evolve(fusion="isolated"), components=[plain_sgd],
                        write_results=False)
    per = result.metrics["per_client"]
    assert per["0"]["small"]["accuracy_matrix"] != per["1"]["small"]["accuracy_matrix"]
    assert result.metrics["communication"]["bytes_down_total"] == 0


def test_fedavg_refuses_heterogeneous_models(tiny, plain_sgd):
    with pytest.raises(IncompatibleComponentsError, match="same small-model architecture") as e:
        fclkit.run(tiny.evolve(client_models=("mlp", "cnn")), components=[plain_sgd])
    assert "--fusion one-by-one" in e.value.hint


def test_heterogeneous_models_run_with_isolated(tiny, plain_sgd):
    result = fclkit.run(tiny.evolve(client_models="mlp,cnn", fusion="isolated"),
                        components=[plain_sgd], write_results=False)
    assert result.metrics["architectures"] == {"0": "mlp", "1": "cnn"}


def test_a_per_client_mapping_assigns_architectures(tiny, plain_sgd):
    config = tiny.evolve(clients=3, client_models={"1": "cnn", "default": "mlp"},
                         fusion="isolated")
    result = fclkit.run(config, components=[plain_sgd])
    assert result.metrics["architectures"] == {"0": "mlp", "1": "cnn", "2": "mlp"}
    saved = tomllib.loads((result.run_dir / "config.toml").read_text())
    assert saved["client_models"] == {"1": "cnn", "default": "mlp"}  # a TOML table
    assert fclkit.ExperimentConfig(**saved).client_models == config.client_models


def test_a_mapping_that_misses_a_client_is_refused_before_any_work(tiny, plain_sgd):
    with pytest.raises(fclkit.ConfigError, match=r"no architecture for client\(s\) \[1\]") as e:
        fclkit.run(tiny.evolve(client_models="0=mlp"), components=[plain_sgd])
    assert "default" in e.value.hint
    with pytest.raises(fclkit.ConfigError, match="there is no client 5"):
        fclkit.run(tiny.evolve(client_models="0=mlp,5=cnn,default=mlp"),
                   components=[plain_sgd])


def test_auto_small_model_is_the_benchmarks_default(tiny):
    from fclkit.plugins import build_registry
    from fclkit.runtime.experiment import Experiment

    langid = Experiment(tiny.evolve(benchmark="langid", cl="naive"), build_registry())
    assert langid.architectures == {0: "text-cnn", 1: "text-cnn"}
    assert langid.config.client_models == ("text-cnn",)
    mixed = Experiment(tiny.evolve(cl="naive", client_models="auto,cnn", fusion="isolated"),
                       build_registry())
    assert mixed.architectures == {0: "mlp", 1: "cnn"}


def test_model_options_reach_the_architecture(tiny, plain_sgd):
    small = fclkit.run(tiny.evolve(model_options={"hidden": 8}), components=[plain_sgd],
                       write_results=False)
    big = fclkit.run(tiny, components=[plain_sgd], write_results=False)
    up = small.metrics["communication"]["bytes_up_total"]
    assert up < big.metrics["communication"]["bytes_up_total"] / 4


class _Flaky(KnowledgeFusion):
    name = "flaky-fusion"

    def fuse(self, round_info, uploads, failures):
        if round_info.task == 1:
            raise RuntimeError("server crashed")
        return FusionResult(downloads={})


def test_a_crash_keeps_partial_results(tiny, plain_sgd):
    with pytest.raises(RuntimeError, match="server crashed"):
        fclkit.run(tiny.evolve(fusion="flaky-fusion", name="crash"),
                   components=[plain_sgd, _Flaky])
    run_dir = tiny.output + "/crash"
    info = json.loads(open(run_dir + "/run.json").read())
    assert info["status"] == "failed" and "server crashed" in info["error"]
    partial = json.loads(open(run_dir + "/metrics.json").read())
    assert partial["complete"] is False and partial["tasks_evaluated"] == 1


def test_a_failing_client_is_recorded_and_the_round_completes(tiny, plain_sgd):
    class FailsOnSecondClient(plain_sgd):
        name = "fails-on-second-client"
        built = 0

        def __init__(self, model, options, context):
            super().__init__(model, options, context)
            type(self).built += 1
            self.broken = type(self).built == 2

        def train_round(self, task, **kw):
            if self.broken:
                raise ValueError("disk full")
            return super().train_round(task, **kw)

    result = fclkit.run(tiny.evolve(cl="fails-on-second-client"),
                        components=[FailsOnSecondClient], write_results=False)
    failures = result.metrics["failures"]
    assert len(failures) == 4 and {f["client"] for f in failures} == {1}
    assert failures[0]["reason"] == "ValueError: disk full"
    assert result.metrics["per_client"]["0"]["small"]["average_accuracy"] > 0


def test_unknown_component_options_are_named(tiny, plain_sgd):
    with pytest.raises(fclkit.ConfigError, match="fusion_options.weigthing"):
        fclkit.run(tiny.evolve(fusion_options={"weigthing": "uniform"}), components=[plain_sgd])
    with pytest.raises(fclkit.ConfigError, match="model_options.depth"):
        fclkit.run(tiny.evolve(model_options={"depth": 3}), components=[plain_sgd])
