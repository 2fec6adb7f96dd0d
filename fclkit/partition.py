"""Cutting a labelled data set into a federated continual stream.

Shared by every benchmark that starts from one labelled pool (digits, MNIST,
Avalanche's classic sets, your own data, ...), so all of them split the same way.
What the tasks are is the run's ``scenario`` (:class:`~fclkit.interfaces.StreamSpec`):

``class`` (class-incremental, the default)
    the class order is shuffled under the seed and cut into ``num_tasks``
    consecutive groups of classes (the first tasks get one more class when the
    number of classes does not divide evenly); with ``class_order = "per-client"``
    every client draws its own order (under the seed), so the same class arrives in
    different tasks on different clients;
``domain`` (domain-incremental)
    every task holds every class, each task a new domain: the values of the data's
    domain column when the benchmark has one (``domains``), else generated variants of
    the pool (``domain_transform``): ``rotated`` (task t's images rotated by
    ``t * rotation_angle`` degrees, task 1 as it is) or ``permuted`` (a fixed pixel
    permutation per task, drawn under the seed; task 1 unpermuted). Each generated task
    holds the whole pool in its domain.

Then:

1. a stratified ``public_fraction`` of the training pool becomes the server's
   public/proxy set (unless the benchmark brings its own), disjoint from every
   client's data. In the domain scenario it spans every domain: stratified by
   domain and class, and with generated domains its examples are dealt to the
   domains in turn;
2. each task's training examples are divided among the clients: ``iid``
   (every class split evenly), ``dirichlet`` (each class split in proportions drawn
   from Dirichlet(alpha), resampled until every client has at least
   ``min_examples`` examples of every task) or ``quantity`` (label-quantity skew,
   "#C=k": each client holds ``classes_per_client`` of the task's classes -- its
   ``TaskData.classes`` -- and each class is split evenly among the clients that hold
   it);
3. every client is tested on the task's whole test split (all its classes, in the
   task's domain).
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
    if spec.partition == "quantity":
        return _quantity_split(y, classes, num_clients, spec.classes_per_client, rng,
                               task=task)
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


def quantity_holders(classes: Sequence[int] | np.ndarray, num_clients: int, per_client: int,
                     rng: np.random.Generator, *, task: int) -> dict[int, list[int]]:
    """Label-quantity skew: class -> the clients holding it, each client ``per_client``
    distinct classes of ``classes`` (consecutive places of a shuffled order, dealt in
    turn, so every class has a holder when ``num_clients * per_client`` reaches the
    number of classes)."""
    classes = np.asarray(classes)
    _check_per_client(per_client, len(classes), task)
    order = rng.permutation(classes)
    holders: dict[int, list[int]] = {int(c): [] for c in classes}
    for client in range(num_clients):
        for j in range(per_client):
            holders[int(order[(client * per_client + j) % len(order)])].append(client)
    return holders


def _check_per_client(per_client: int, available: int, task: int) -> None:
    if per_client > available:
        raise ConfigError("classes_per_client", per_client,
                          f"task {task + 1} has only {available} classes, so a client can "
                          f"hold at most {available} of them",
                          hint=f"--classes-per-client {available} (or fewer tasks)")


def _even_split(idx: np.ndarray, owners: Sequence[int], parts: list[list[np.ndarray]],
                offset: int) -> int:
    """``idx`` split evenly among ``owners`` (appended to ``parts``); the next offset."""
    for i, chunk in enumerate(np.array_split(idx, len(owners))):
        parts[owners[(i + offset) % len(owners)]].append(chunk)
    return offset + len(idx) % len(owners)


def _quantity_split(y: np.ndarray, classes: np.ndarray, num_clients: int, per_client: int,
                    rng: np.random.Generator, *, task: int) -> list[np.ndarray]:
    holders = quantity_holders(classes, num_clients, per_client, rng, task=task)
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    offset = 0
    for c in classes:
        idx = rng.permutation(np.flatnonzero(y == c))
        owners = holders[int(c)]
        if len(idx) < len(owners):
            raise ConfigError("classes_per_client", per_client,
                              f"class {int(c)} of task {task + 1} has {len(idx)} training "
                              f"examples, too few for the {len(owners)} clients holding it",
                              hint="fewer clients or a smaller classes_per_client")
        if owners:
            offset = _even_split(idx, owners, parts, offset)
    result = [np.sort(np.concatenate(p)) if p else np.zeros(0, dtype=np.int64) for p in parts]
    small = [k for k, r in enumerate(result) if len(r) < MIN_EXAMPLES_PER_CLIENT_TASK]
    if small:
        raise ConfigError("clients", num_clients,
                          f"client {small[0]} has fewer than {MIN_EXAMPLES_PER_CLIENT_TASK} "
                          f"training examples of task {task + 1}; use fewer clients")
    return result


# ------------------------------------------------------------------ domains


def rotate_images(x: Any, degrees: float) -> Any:
    """Images ``(n, C, H, W)`` rotated counter-clockwise by ``degrees`` about their centre
    (bilinear; what comes in from outside the image is 0). Integer images (e.g. uint8)
    stay integers, rounded."""
    import math

    import torch
    import torch.nn.functional as F

    if degrees % 360 == 0:
        return x.clone()
    dtype = x.dtype
    xf = x if dtype.is_floating_point else x.float()
    n, _, h, w = xf.shape
    a = math.radians(degrees)
    cos, sin = math.cos(a), math.sin(a)
    # output pixel (u, v) in [-1, 1] coordinates samples the input at R(-a) (u, v),
    # with the aspect ratio taken into account (coordinates are scaled by W and H)
    theta = torch.tensor([[cos, -sin * h / w, 0.0], [sin * w / h, cos, 0.0]],
                         dtype=xf.dtype).unsqueeze(0).expand(n, 2, 3)
    grid = F.affine_grid(theta, list(xf.shape), align_corners=False)
    out = F.grid_sample(xf, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if not dtype.is_floating_point:
        info = torch.iinfo(dtype)
        out = out.round().clamp(info.min, info.max).to(dtype)
    return out


def permute_pixels(x: Any, permutation: Any) -> Any:
    """Images ``(n, C, H, W)`` with their ``H * W`` pixel positions reordered by
    ``permutation`` (the same for every channel); ``None`` leaves them as they are."""
    import torch

    if permutation is None:
        return x.clone()
    n, c, h, w = x.shape
    perm = torch.as_tensor(np.asarray(permutation), dtype=torch.long)
    return x.reshape(n, c, h * w)[:, :, perm].reshape(n, c, h, w)


def domain_transforms(spec: StreamSpec, input_spec: InputSpec, rng: np.random.Generator
                      ) -> tuple[list[Any], list[str]]:
    """The generated domains of a pool without its own: one function (images -> images)
    and one name per task. Raises a ConfigError when the inputs are not images."""
    shape = tuple(input_spec.shape)
    if input_spec.modality != "image" or len(shape) != 3:
        raise ConfigError(
            "scenario", "domain",
            f"this benchmark has no domains of its own, and its {input_spec.modality} "
            f"inputs {shape} cannot be rotated or permuted into domains (images only)",
            hint="--scenario class, or a benchmark with a domain column (text-file, "
            "hf-dataset: --benchmark-opt domain_column=NAME)")
    T = spec.num_tasks
    if spec.domain_transform == "rotated":
        angles = [t * spec.rotation_angle for t in range(T)]
        return ([lambda x, a=a: rotate_images(x, a) for a in angles],
                [f"rotated {a:g} deg" for a in angles])
    if spec.domain_transform == "permuted":
        pixels = shape[1] * shape[2]
        perms = [None] + [rng.permutation(pixels) for _ in range(1, T)]
        return ([lambda x, p=p: permute_pixels(x, p) for p in perms],
                ["unpermuted"] + [f"permutation {t}" for t in range(1, T)])
    raise ConfigError("domain_transform", spec.domain_transform,
                      "must be one of: rotated, permuted")


# ------------------------------------------------------------------ the stream


def federated_stream(
    x_train: Any, y_train: Any, x_test: Any, y_test: Any, spec: StreamSpec, *,
    input_spec: InputSpec, public: Any = None, class_names: Sequence[str] = (),
    domains: tuple[Any, Any] | None = None, domain_names: Sequence[str] = (),
) -> FederatedStream:
    """Build the :class:`FederatedStream` ``spec`` asks for from one labelled pool.

    Labels must be integers ``0..C-1``. ``public``, when given, is the
    benchmark's own public set (inputs only); otherwise one is carved out of
    the training pool with ``spec.public_fraction``. ``domains`` -- the domain id
    (``0..D-1``, the task order) of every training and every test example -- and
    ``domain_names`` are the data's own domains, used when ``spec.scenario`` is
    ``"domain"`` (without them, domains are generated: ``spec.domain_transform``).
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
    if spec.scenario == "domain":
        return _domain_stream(x_train, ytr, x_test, yte, spec, rng, classes=classes,
                              num_classes=num_classes, input_spec=input_spec, public=public,
                              class_names=class_names, domains=domains,
                              domain_names=domain_names)
    if spec.scenario != "class":
        raise ConfigError("scenario", spec.scenario, "must be one of: class, domain")
    if spec.class_order == "per-client":
        return _per_client_stream(x_train, ytr, x_test, yte, spec, rng, classes=classes,
                                  num_classes=num_classes, input_spec=input_spec,
                                  public=public, class_names=class_names)
    groups = task_classes(classes, spec.num_tasks, rng)
    if spec.partition == "quantity":
        _check_per_client(spec.classes_per_client, min(len(g) for g in groups),
                          int(np.argmin([len(g) for g in groups])))

    public_set, x_train, ytr, _ = _public_set(x_train, ytr, spec, rng, public)

    per_client: list[list[TaskData]] = [[] for _ in range(spec.num_clients)]
    for t, group in enumerate(groups):
        tr = np.flatnonzero(np.isin(ytr, group))
        te = np.flatnonzero(np.isin(yte, group))
        x_te, y_te = x_test[te], torch.as_tensor(yte[te])
        for k, part in enumerate(partition_indices(ytr[tr], spec.num_clients, spec, rng,
                                                   task=t)):
            sel = tr[part]
            held = (np.unique(ytr[sel]) if spec.partition == "quantity" else sorted(group))
            per_client[k].append(TaskData(
                task_id=t, classes=tuple(int(c) for c in held),
                x_train=x_train[sel], y_train=torch.as_tensor(ytr[sel]),
                x_test=x_te, y_test=y_te))
    return FederatedStream(
        input_spec=input_spec, num_classes=num_classes,
        class_order=tuple(int(c) for g in groups for c in g),
        clients=tuple(ClientStream(k, tuple(ts)) for k, ts in enumerate(per_client)),
        public=public_set, class_names=tuple(class_names),
        task_classes=tuple(tuple(int(c) for c in sorted(g)) for g in groups))


#: the name every benchmark has called it by; it builds whatever stream the spec asks for
class_incremental_stream = federated_stream


def _public_set(x_train: Any, ytr: np.ndarray, spec: StreamSpec, rng: np.random.Generator,
                public: Any, strata: np.ndarray | None = None
                ) -> tuple[PublicSet | None, Any, np.ndarray, np.ndarray | None]:
    """(public set, kept x, kept y, kept positions) -- the benchmark's own public set, or a
    stratified ``public_fraction`` of the training pool (by ``strata``, else by label)."""
    import torch

    if public is not None:
        return PublicSet(x=torch.as_tensor(public)), x_train, ytr, None
    if spec.public_fraction > 0:
        kept, pub = split_public(ytr if strata is None else strata, spec.public_fraction, rng)
        public_set = PublicSet(x=x_train[pub], y=torch.as_tensor(ytr[pub]))
        return public_set, x_train[kept], ytr[kept], kept
    return None, x_train, ytr, None


def _per_client_stream(x_train: Any, ytr: np.ndarray, x_test: Any, yte: np.ndarray,
                       spec: StreamSpec, rng: np.random.Generator, *, classes: np.ndarray,
                       num_classes: int, input_spec: InputSpec, public: Any,
                       class_names: Sequence[str]) -> FederatedStream:
    """Class-incremental tasks, every client with its own class order.

    Each class's training examples are divided among the clients (``iid``: evenly;
    ``dirichlet``: in Dirichlet(alpha) proportions; ``quantity``: evenly among the
    clients holding it), and each client learns its share of a class in the task its
    own order puts that class in.
    """
    import torch

    K, T = spec.num_clients, spec.num_tasks
    groups = [task_classes(classes, T, rng) for _ in range(K)]
    held = groups
    if spec.partition == "quantity":
        size, task = min((len(g), t) for gs in groups for t, g in enumerate(gs))
        _check_per_client(spec.classes_per_client, size, task)
        held = [[np.sort(rng.choice(g, size=spec.classes_per_client, replace=False))
                 for g in gs] for gs in groups]
    holders: dict[int, list[int]] = {int(c): [] for c in classes}
    for k in range(K):
        for g in held[k]:
            for c in g:
                holders[int(c)].append(k)
    public_set, x_train, ytr, _ = _public_set(x_train, ytr, spec, rng, public)
    tries = _DIRICHLET_TRIES if spec.partition == "dirichlet" else 1
    for _ in range(tries):
        share: list[list[np.ndarray]] = [[] for _ in range(K)]
        offset = 0
        for c in classes:
            idx = rng.permutation(np.flatnonzero(ytr == c))
            owners = holders[int(c)]
            if not owners:
                continue
            if spec.partition == "dirichlet":
                props = rng.dirichlet(np.full(len(owners), spec.dirichlet_alpha))
                cuts = (np.cumsum(props) * len(idx)).astype(int)[:-1]
                for k, chunk in zip(owners, np.split(idx, cuts), strict=True):
                    share[k].append(chunk)
            else:
                offset = _even_split(idx, owners, share, offset)
        mine = [np.concatenate(s) if s else np.zeros(0, dtype=np.int64) for s in share]
        by_task = [[np.sort(m[np.isin(ytr[m], held[k][t])]) for t in range(T)]
                   for k, m in enumerate(mine)]
        short = [(k, t) for k in range(K) for t in range(T)
                 if len(by_task[k][t]) < MIN_EXAMPLES_PER_CLIENT_TASK]
        if not short:
            break
    if short and spec.partition == "dirichlet":
        raise ConfigError(
            "dirichlet_alpha", spec.dirichlet_alpha,
            f"after {_DIRICHLET_TRIES} draws some client still had fewer than "
            f"{MIN_EXAMPLES_PER_CLIENT_TASK} examples of one of its tasks; use a larger "
            "alpha or fewer clients")
    if short:
        k, t = short[0]
        raise ConfigError("clients", K,
                          f"client {k} has fewer than {MIN_EXAMPLES_PER_CLIENT_TASK} training "
                          f"examples of its task {t + 1}; use fewer clients or fewer tasks")
    clients = []
    for k in range(K):
        tasks = []
        for t, group in enumerate(groups[k]):
            te = np.flatnonzero(np.isin(yte, group))
            sel = by_task[k][t]
            tasks.append(TaskData(
                task_id=t, classes=tuple(int(c) for c in sorted(held[k][t])),
                x_train=x_train[sel], y_train=torch.as_tensor(ytr[sel]),
                x_test=x_test[te], y_test=torch.as_tensor(yte[te])))
        clients.append(ClientStream(k, tuple(tasks),
                                    class_order=tuple(int(c) for g in groups[k] for c in g)))
    return FederatedStream(input_spec=input_spec, num_classes=num_classes, class_order=(),
                           clients=tuple(clients), public=public_set,
                           class_names=tuple(class_names))


def _domain_stream(x_train: Any, ytr: np.ndarray, x_test: Any, yte: np.ndarray,
                   spec: StreamSpec, rng: np.random.Generator, *, classes: np.ndarray,
                   num_classes: int, input_spec: InputSpec, public: Any,
                   class_names: Sequence[str], domains: tuple[Any, Any] | None,
                   domain_names: Sequence[str]) -> FederatedStream:
    """Domain-incremental tasks: the data's own domains, or generated ones."""
    import torch

    T = spec.num_tasks
    if spec.class_order == "per-client":
        raise ConfigError("class_order", spec.class_order,
                          "with scenario = 'domain' every task holds every class: there is "
                          "no class order to give each client", hint="class_order = shared")
    d_tr: np.ndarray | None = None
    d_te: np.ndarray | None = None
    if domains is not None:
        d_tr = np.asarray(domains[0], dtype=np.int64)
        d_te = np.asarray(domains[1], dtype=np.int64)
        names = [str(n) for n in domain_names] or [
            str(d) for d in sorted(set(d_tr.tolist()) | set(d_te.tolist()))]
        if len(names) != T:
            shown = ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
            raise ConfigError("tasks", T, f"the data has {len(names)} domains ({shown}), "
                              "and each domain is one task",
                              hint=f"--tasks {len(names)}, or choose and order domains with "
                              "--benchmark-opt domain_order=A,B,...")
        transforms: list[Any] = [None] * T
        strata = d_tr * max(num_classes, 1) + ytr
    else:
        transforms, names = domain_transforms(spec, input_spec, rng)
        strata = None
    public_set, x_train, ytr, kept = _public_set(x_train, ytr, spec, rng, public, strata)
    if d_tr is not None and kept is not None:
        d_tr = d_tr[kept]
    if d_tr is None and public is None and public_set is not None:
        # generated domains: the public examples are dealt to the domains in turn
        n = len(public_set.x)
        dealt = np.empty(n, dtype=np.int64)
        dealt[rng.permutation(n)] = np.arange(n) % T
        x_pub = public_set.x.clone()
        for t in range(T):
            where = torch.as_tensor(np.flatnonzero(dealt == t))
            if len(where):
                x_pub[where] = transforms[t](public_set.x[where])
        public_set = PublicSet(x=x_pub, y=public_set.y)

    per_client: list[list[TaskData]] = [[] for _ in range(spec.num_clients)]
    task_cls = []
    for t in range(T):
        tr = np.arange(len(ytr)) if d_tr is None else np.flatnonzero(d_tr == t)
        te = np.arange(len(yte)) if d_te is None else np.flatnonzero(d_te == t)
        if len(te) == 0:
            raise ConfigError("benchmark", names[t], f"domain {names[t]!r} (task {t + 1}) "
                              "has no test example", hint="raise test_fraction, or give "
                              "more examples of that domain")
        present = np.unique(ytr[tr])
        if spec.partition == "quantity":
            _check_per_client(spec.classes_per_client, len(present), t)
        task_cls.append(tuple(int(c) for c in present))
        x_te = x_test[te] if transforms[t] is None else transforms[t](x_test[te])
        y_te = torch.as_tensor(yte[te])
        for k, part in enumerate(partition_indices(ytr[tr], spec.num_clients, spec, rng,
                                                   task=t)):
            sel = tr[part]
            held = np.unique(ytr[sel]) if spec.partition == "quantity" else present
            x_k = x_train[sel] if transforms[t] is None else transforms[t](x_train[sel])
            per_client[k].append(TaskData(
                task_id=t, classes=tuple(int(c) for c in held), x_train=x_k,
                y_train=torch.as_tensor(ytr[sel]), x_test=x_te, y_test=y_te))
    return FederatedStream(
        input_spec=input_spec, num_classes=num_classes,
        class_order=tuple(int(c) for c in classes),
        clients=tuple(ClientStream(k, tuple(ts)) for k, ts in enumerate(per_client)),
        public=public_set, class_names=tuple(class_names), scenario="domain",
        domains=tuple(names), task_classes=tuple(task_cls))
