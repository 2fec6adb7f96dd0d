"""The Avalanche strategies through the whole runtime (fclkit.run), not just one strategy."""

import warnings

import pytest
import torch
from torch import nn

import fclkit
from fclkit.plugins import build_registry
from fclkit.runtime.client import accuracy
from fclkit.runtime.experiment import Experiment
from fclkit.runtime.seeding import derive_seed

DIRECT = {  # the same Avalanche class, driven by hand
    "ewc": ("EWC", {"ewc_lambda": 100.0, "mode": "separate", "decay_factor": None}),
    "lwf": ("LwF", {"alpha": 1.0, "temperature": 2.0}),
    "replay": ("Replay", {"mem_size": 200}),
}


def _direct_matrix(config, name):
    """Avalanche's own strategy on fclkit's stream, same initial weights, same seeds."""
    from avalanche.benchmarks import tensors_benchmark
    from avalanche.training import supervised
    from avalanche.training.plugins import EvaluationPlugin

    exp = Experiment(config, build_registry())
    exp.prepare()
    model = exp.build_small_model("mlp")
    cls_name, kwargs = DIRECT[name]
    strategy = getattr(supervised, cls_name)(
        model=model, criterion=nn.CrossEntropyLoss(),
        optimizer=torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum),
        train_mb_size=config.batch_size, train_epochs=config.epochs,
        eval_mb_size=config.batch_size, device="cpu",
        evaluator=EvaluationPlugin(loggers=[]), eval_every=-1, **kwargs)
    tasks = exp.stream.clients[0].tasks
    bench = tensors_benchmark(train_tensors=[(t.x_train, t.y_train) for t in tasks],
                              test_tensors=[(t.x_test, t.y_test) for t in tasks],
                              task_labels=[0] * len(tasks))
    matrix = []
    for t in range(len(tasks)):
        torch.manual_seed(derive_seed(config.seed, "fit", 0, t, 0))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            strategy.train(bench.train_stream[t])
        model.eval()
        matrix.append([accuracy(model, task.x_test, task.y_test) for task in tasks])
    return matrix


@pytest.mark.parametrize("name", ["ewc", "lwf", "replay"])
def test_one_client_without_federation_matches_avalanche(name, tmp_path):
    config = fclkit.ExperimentConfig(cl=name, clients=1, tasks=3, rounds=1, epochs=2,
                                     fusion="isolated", output=str(tmp_path))
    result = fclkit.run(config, write_results=False)
    ours = result.accuracy_matrix("small", client=0)
    theirs = _direct_matrix(config, name)
    final_ours, final_theirs = sum(ours[-1]) / 3, sum(theirs[-1]) / 3
    assert abs(final_ours - final_theirs) <= 0.01
    assert ours == theirs  # in fact identical, entry by entry


def test_replay_forgets_less_than_naive_in_a_federated_run(tmp_path):
    base = fclkit.ExperimentConfig(fusion="fedavg", clients=2, tasks=4, rounds=2, epochs=3,
                                   output=str(tmp_path))
    naive = fclkit.run(base.evolve(cl="naive"), write_results=False).summary("small")
    replay = fclkit.run(base.evolve(cl="replay"), write_results=False).summary("small")
    assert replay["average_forgetting"] < naive["average_forgetting"] - 0.2
    assert replay["average_accuracy"] > naive["average_accuracy"] + 0.2


def test_strategy_options_from_the_cli_reach_avalanche(tmp_path):
    from typer.testing import CliRunner

    from fclkit.cli import app

    res = CliRunner().invoke(app, ["run", "-q", "--cl", "ewc", "--cl-opt", "ewc_lambda=-1",
                                   "--output", str(tmp_path)])
    assert res.exit_code == 1 and "cl_options.ewc_lambda" in res.output
