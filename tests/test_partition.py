"""Splitting a labelled pool into a federated class-incremental stream."""

import numpy as np
import pytest
import torch

from fclkit import ConfigError, InputSpec, StreamSpec
from fclkit.partition import class_incremental_stream


def _pool(n_per_class=40, classes=10):
    y = np.repeat(np.arange(classes), n_per_class)
    x = torch.arange(len(y), dtype=torch.float32).unsqueeze(1)  # x = example id
    return x, y


def _stream(partition="iid", clients=3, tasks=5, alpha=0.5, public=0.1, seed=0):
    x, y = _pool()
    xt, yt = _pool(10)
    spec = StreamSpec(num_clients=clients, num_tasks=tasks, seed=seed, partition=partition,
                      dirichlet_alpha=alpha, public_fraction=public)
    return class_incremental_stream(x, y, xt + 10_000, yt, spec,
                                    input_spec=InputSpec("tabular", (1,)))


@pytest.mark.parametrize("partition", ["iid", "dirichlet"])
def test_clients_public_and_tasks_are_disjoint(partition):
    s = _stream(partition)
    seen = set()
    for client in s.clients:
        for task in client.tasks:
            ids = set(task.x_train[:, 0].long().tolist())
            assert not ids & seen, "an example was given to two clients or two tasks"
            seen |= ids
            assert set(task.y_train.tolist()) <= set(task.classes)
    public = set(s.public.x[:, 0].long().tolist())
    assert not public & seen
    assert len(public) == 40  # 10 % of 400, stratified
    assert len(seen) + len(public) == 400


def test_tasks_partition_the_shuffled_classes():
    s = _stream()
    groups = [t.classes for t in s.clients[0].tasks]
    assert sorted(c for g in groups for c in g) == list(range(10))
    assert [len(g) for g in groups] == [2] * 5
    assert s.class_order != tuple(range(10))  # shuffled under the seed


def test_iid_splits_each_class_evenly():
    s = _stream("iid")
    sizes = [c.tasks[0].num_train for c in s.clients]
    assert max(sizes) - min(sizes) <= 2


def test_dirichlet_is_skewed_and_seeded():
    a = _stream("dirichlet", alpha=0.1)
    b = _stream("dirichlet", alpha=0.1)
    sizes = [c.tasks[0].num_train for c in a.clients]
    assert max(sizes) - min(sizes) > 5
    assert sizes == [c.tasks[0].num_train for c in b.clients]
    assert all(torch.equal(c.tasks[0].x_train, d.tasks[0].x_train)
               for c, d in zip(a.clients, b.clients, strict=True))


def test_test_split_holds_the_task_classes():
    s = _stream()
    task = s.clients[1].tasks[2]
    assert set(task.y_test.tolist()) == set(task.classes)
    assert len(task.y_test) == 20


def test_more_tasks_than_classes_is_an_error():
    with pytest.raises(ConfigError, match="at most 10"):
        _stream(tasks=11)


def test_too_many_clients_is_an_error():
    with pytest.raises(ConfigError, match="clients"):
        _stream(clients=40)
