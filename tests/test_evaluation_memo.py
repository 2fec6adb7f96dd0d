"""One evaluation computes a model's accuracy on a test set once, however many clients
hold that model (fclkit.runtime.client.EvaluationMemo)."""

from __future__ import annotations

import pytest

import fclkit
from fclkit.runtime import client as client_module
from fclkit.runtime.client import EvaluationMemo, accuracy

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(clients=3, tasks=2, rounds=1, epochs=1, threads=1, loggers=("none",),
            checkpoint=False, cache_dir="none")


@pytest.fixture
def checked_memo(monkeypatch):
    """Every answer the memo gives from memory is recomputed and must be the same."""
    answered = {"hits": 0, "by_kind": set()}
    original = EvaluationMemo.accuracy

    def accuracy_checked(self, model_key, forward, task):
        hits = self.hits
        value = original(self, model_key, forward, task)
        if self.hits > hits:
            answered["hits"] += 1
            answered["by_kind"].add(model_key[0])
            assert accuracy(forward, task.x_test, task.y_test) == value
        return value

    monkeypatch.setattr(client_module.EvaluationMemo, "accuracy", accuracy_checked)
    return answered


def test_fedavg_clients_hold_one_model_and_are_evaluated_once(checked_memo):
    metrics = fclkit.run(fclkit.ExperimentConfig(cl="naive", fusion="fedavg", **TINY),
                         write_results=False).metrics
    # after the download every client holds the global model: clients 1 and 2 are
    # answered from client 0's evaluation, on every task, at every evaluation
    assert checked_memo["hits"] == 2 * 2 * 3  # (clients - 1) x tasks x evaluations
    per_client = metrics["per_client"]
    assert per_client["0"]["small"] == per_client["1"]["small"] == per_client["2"]["small"]


def test_personalised_models_are_each_evaluated_and_the_global_fm_once(checked_memo):
    fclkit.run(fclkit.ExperimentConfig(cl="replay", fusion="one-by-one", **TINY),
               write_results=False)
    assert "fm" in checked_memo["by_kind"]  # the global FM part, the same for all


def test_a_memo_tells_apart_models_and_test_sets():
    import torch

    from fclkit.stream import TaskData

    def task(x, y):
        return TaskData(task_id=0, classes=(0, 1), x_train=x, y_train=y, x_test=x, y_test=y)

    x = torch.tensor([[1.0], [-1.0]])
    a, b = task(x, torch.tensor([0, 1])), task(x.clone(), torch.tensor([1, 0]))
    right = lambda z: torch.cat([-z, z], dim=1)  # noqa: E731 - class 1 when z > 0
    memo = EvaluationMemo()
    assert memo.accuracy(("small", "m", "w1"), right, a) == 0.0
    assert memo.accuracy(("small", "m", "w1"), right, b) == 1.0  # other test tensors
    assert memo.accuracy(("small", "m", "w2"), lambda z: -right(z), a) == 1.0  # other weights
    assert memo.accuracy(("small", "m", "w1"), right, a) == 0.0
    assert (memo.hits, memo.misses) == (1, 3)
