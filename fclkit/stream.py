"""The data a run learns from: per-client task streams and the server's public set.

These are plain containers of tensors. A :class:`~fclkit.interfaces.Benchmark`
produces a :class:`FederatedStream`; the runtime hands each client its own
:class:`ClientStream` and the server the :class:`PublicSet` -- never a client's data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:  # torch is imported only when a run needs it
    import torch


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(int(v) for v in value)


@attrs.frozen
class InputSpec:
    """What a model's input looks like, so a ClientModel can build for it."""

    modality: str = attrs.field(metadata={"help": "'image', 'text', 'tabular', ..."})
    shape: tuple[int, ...] = attrs.field(
        converter=_shape, metadata={"help": "shape of one example, e.g. (1, 8, 8)"}
    )
    extra: dict[str, Any] = attrs.field(factory=dict, metadata={"help": "e.g. vocab_size"})


@attrs.frozen(eq=False)
class TaskData:
    """One task of one client: its private training split and the task's test split.

    ``classes`` are the classes this client trains on in the task: the task's classes,
    or the share it holds of them under ``partition = "quantity"``; the test split holds
    every class of the task.
    """

    task_id: int
    classes: tuple[int, ...]
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def num_train(self) -> int:
        return int(self.y_train.shape[0])


@attrs.frozen(eq=False)
class ClientStream:
    """The ordered tasks one client sees.

    ``class_order`` is the order in which this client's tasks introduce the classes
    when clients have their own orders (``class_order = "per-client"``); empty: the
    stream's.
    """

    client_id: int
    tasks: tuple[TaskData, ...]
    class_order: tuple[int, ...] = ()


#: the label of a public example whose label the server does not hold
UNLABELLED = -1


@attrs.frozen(eq=False)
class PublicSet:
    """The server's public/proxy data, disjoint from every client's.

    ``x`` holds every input. ``y`` holds a label per example where one is known
    and :data:`UNLABELLED` (-1) where not; ``None`` when no example is labelled.
    A benchmark yields every label it has; a fusion sees only the labels the
    run's ``public_labels`` budget gives the server (:meth:`server_view`).
    """

    x: torch.Tensor
    y: torch.Tensor | None = None

    @property
    def labelled_index(self) -> torch.Tensor:
        """Indices of the examples whose label is known (empty when none is)."""
        import torch

        if self.y is None:
            return torch.zeros(0, dtype=torch.long)
        return torch.nonzero(self.y != UNLABELLED).flatten()

    @property
    def labelled_x(self) -> torch.Tensor:
        return self.x[self.labelled_index]

    @property
    def labelled_y(self) -> torch.Tensor:
        import torch

        if self.y is None:
            return torch.zeros(0, dtype=torch.long)
        return self.y[self.labelled_index]

    def labelled_among(self, classes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices into ``x``, targets) of the labelled examples of ``classes``; a target
        is the label's position in ``classes`` (the column of a head restricted to them)."""
        import torch

        index = self.labelled_index
        labels = self.labelled_y
        mask = torch.isin(labels, torch.tensor(list(classes), dtype=torch.long))
        column = {int(c): i for i, c in enumerate(classes)}
        target = torch.tensor([column[int(c)] for c in labels[mask]], dtype=torch.long)
        return index[mask], target

    def server_view(self, per_class: int, seed: int) -> PublicSet:
        """The same inputs with at most ``per_class`` labels of each class kept (chosen
        at random under ``seed``); every other label becomes :data:`UNLABELLED`."""
        import torch

        if per_class == 0 or self.y is None:
            return PublicSet(x=self.x)
        known = self.labelled_index
        gen = torch.Generator().manual_seed(seed)
        keep = []
        for c in torch.unique(self.y[known]).tolist():
            idx = known[self.y[known] == c]
            keep.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]])
        y = torch.full_like(self.y, UNLABELLED)
        chosen = torch.cat(keep) if keep else torch.zeros(0, dtype=torch.long)
        y[chosen] = self.y[chosen]
        return PublicSet(x=self.x, y=y)


@attrs.frozen(eq=False)
class FederatedStream:
    """Everything a benchmark yields for one run.

    ``scenario`` says what the tasks are: ``"class"`` (each task new classes) or
    ``"domain"`` (every task the same classes, each task a new domain, named in
    ``domains``). ``class_order`` and ``task_classes`` (the classes of each task) are
    shared by every client; both are empty when each client has its own order
    (``ClientStream.class_order``).
    """

    input_spec: InputSpec
    num_classes: int
    class_order: tuple[int, ...]
    clients: tuple[ClientStream, ...]
    public: PublicSet | None = None
    class_names: tuple[str, ...] = ()
    scenario: str = "class"
    domains: tuple[str, ...] = ()
    task_classes: tuple[tuple[int, ...], ...] = ()

    @property
    def num_tasks(self) -> int:
        return len(self.clients[0].tasks) if self.clients else 0
