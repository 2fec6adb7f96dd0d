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
    """One task of one client: its private training split and the task's test split."""

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
    """The ordered tasks one client sees."""

    client_id: int
    tasks: tuple[TaskData, ...]


@attrs.frozen(eq=False)
class PublicSet:
    """Unlabelled public/proxy data held by the server (disjoint from every client)."""

    x: torch.Tensor
    y: torch.Tensor | None = None  # kept only for analysis; fusion must not use labels


@attrs.frozen(eq=False)
class FederatedStream:
    """Everything a benchmark yields for one run."""

    input_spec: InputSpec
    num_classes: int
    class_order: tuple[int, ...]
    clients: tuple[ClientStream, ...]
    public: PublicSet | None = None
    class_names: tuple[str, ...] = ()

    @property
    def num_tasks(self) -> int:
        return len(self.clients[0].tasks) if self.clients else 0
