"""Cutting a labelled data set into a federated class-incremental stream.

Shared by every benchmark that starts from one labelled pool (digits, MNIST,
Avalanche's classic sets, ...), so all of them split the same way:

1. the class order is shuffled under the seed and cut into ``num_tasks``
   consecutive groups of classes (the first tasks get one more class when the
   number of classes does not divide evenly);
2. a stratified ``public_fraction`` of the training pool becomes the server's
   public/proxy set (unless the benchmark brings its own), disjoint from every
   client's data;
3. each task's training examples are divided among the clients: ``iid``
   (every class split evenly) or ``dirichlet`` (each class split in
   proportions drawn from Dirichlet(alpha), resampled until every client has at
   least ``min_examples`` examples of every task);
4. every client is tested on the task's whole test split (all its classes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import ConfigError
from .interfaces import StreamSpec
from .stream import ClientStream, FederatedStream, InputSpec, PublicSet, TaskData

MIN_EXAMPLES_PER_CLIENT_TASK = 2
_DIRICHLET_TRIES = 200


def task_classes(classes: Sequence[int] | np.ndarray, num_tasks: int,
                 rng: np.random.Generator) -> list[np.ndarray]:
    classes = np.asarray(sorted(classes))
    if num_tasks > len(classes):
        raise ConfigError("tasks", num_tasks,
                          f"this benchmark has {len(classes)} classes, so at most "
                          f"{len(classes)} class-incremental tasks")
    order = rng.permutation(classes)
    return [np.asarray(part) for part in np.array_split(order, num_tasks)]


def split_public(y: np.ndarray, fraction: float, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of indices into (kept, public)."""
    kept, public = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_pub = int(round(len(idx) * fraction))
        public.append(idx[:n_pub])
        kept.append(idx[n_pub:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(public))


def partition_indices(y: np.ndarray, num_clients: int, spec: StreamSpec,
                      rng: np.random.Generator, *, task: int) -> list[np.ndarray]:
    """Split the indices of one task's examples (labels ``y``) among clients."""
    classes = np.unique(y)
    if len(y) < num_clients * MIN_EXAMPLES_PER_CLIENT_TASK:
        raise ConfigError(
            "clients", num_clients,
            f"task {task} has only {len(y)} training examples, too few for {num_clients} "
            f"clients with at least {MIN_EXAMPLES_PER_CLIENT_TASK} each; use fewer clients "
            "or fewer tasks")
    if spec.partition == "iid":
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        offset = 0  # rotate so that remainders do not always land on client 0
        for c in classes:
            idx = rng.permutation(np.flatnonzero(y == c))
            for k, chunk in enumerate(np.array_split(idx, num_clients)):
                parts[(k + offset) % num_clients].append(chunk)
            offset += len(idx) % num_clients
        return [np.sort(np.concatenate(p)) for p in parts]
    for _ in range(_DIRICHLET_TRIES):
        parts = [[] for _ in range(num_clients)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(y == c))
            props = rng.dirichlet(np.full(num_clients, spec.dirichlet_alpha))
            cuts = (np.cumsum(props) * len(idx)).astype(int)[:-1]
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].append(chunk)
        result = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(r) for r in result) >= MIN_EXAMPLES_PER_CLIENT_TASK:
            return result
    raise ConfigError(
        "dirichlet_alpha", spec.dirichlet_alpha,
        f"after {_DIRICHLET_TRIES} draws some client still had fewer than "
        f"{MIN_EXAMPLES_PER_CLIENT_TASK} examples of task {task}; use a larger alpha or "
        "fewer clients")


def class_incremental_stream(
    x_train: Any, y_train: Any, x_test: Any, y_test: Any, spec: StreamSpec, *,
    input_spec: InputSpec, public: Any = None, class_names: Sequence[str] = (),
) -> FederatedStream:
    """Build a :class:`FederatedStream` from one labelled pool (tensors or arrays).

    Labels must be integers ``0..C-1``. ``public``, when given, is the
    benchmark's own public set (inputs only); otherwise one is carved out of
    the training pool with ``spec.public_fraction``.
    """
    import torch

    x_train = torch.as_tensor(x_train)
    x_test = torch.as_tensor(x_test)
    ytr = np.asarray(torch.as_tensor(y_train).cpu().numpy()).astype(np.int64)
    yte = np.asarray(torch.as_tensor(y_test).cpu().numpy()).astype(np.int64)
    classes = np.unique(np.concatenate([ytr, yte]))
    num_classes = int(classes.max()) + 1 if len(classes) else 0
    if len(classes) != num_classes:
        raise ValueError("labels must be the integers 0..C-1")
    rng = np.random.default_rng(spec.seed)
    groups = task_classes(classes, spec.num_tasks, rng)

    public_set = None
    if public is not None:
        public_set = PublicSet(x=torch.as_tensor(public))
    elif spec.public_fraction > 0:
        kept, pub = split_public(ytr, spec.public_fraction, rng)
        public_set = PublicSet(x=x_train[pub], y=torch.as_tensor(ytr[pub]))
        x_train, ytr = x_train[kept], ytr[kept]

    per_client: list[list[TaskData]] = [[] for _ in range(spec.num_clients)]
    for t, group in enumerate(groups):
        tr = np.flatnonzero(np.isin(ytr, group))
        te = np.flatnonzero(np.isin(yte, group))
        x_te, y_te = x_test[te], torch.as_tensor(yte[te])
        for k, part in enumerate(partition_indices(ytr[tr], spec.num_clients, spec, rng,
                                                   task=t)):
            sel = tr[part]
            per_client[k].append(TaskData(
                task_id=t, classes=tuple(int(c) for c in sorted(group)),
                x_train=x_train[sel], y_train=torch.as_tensor(ytr[sel]),
                x_test=x_te, y_test=y_te))
    return FederatedStream(
        input_spec=input_spec, num_classes=num_classes,
        class_order=tuple(int(c) for g in groups for c in g),
        clients=tuple(ClientStream(k, tuple(ts)) for k, ts in enumerate(per_client)),
        public=public_set, class_names=tuple(class_names))
