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


def images_as_float(x: Any) -> Any:
    """Image tensors stored as bytes, as float32 in ``[0, 1]`` (``x / 255``); any other
    tensor as it is.

    A benchmark may keep its images as ``uint8`` (0-255), a quarter of their float32
    memory: the runtime converts them a batch at a time where a model reads them (the
    small models, through a forward pre-hook installed when they are built, and the
    foundation model's backbone), so every model sees float32 in ``[0, 1]`` and the
    whole data set never exists as floats. Only ``uint8`` is read this way: token ids
    (``int64``) and float images pass through unchanged.
    """
    import torch

    if isinstance(x, torch.Tensor) and x.dtype == torch.uint8:
        return x.float().div_(255.0)
    return x


def _images_as_float_hook(module: Any, args: tuple) -> tuple | None:
    """Forward pre-hook of a small model on images: a ``uint8`` first input becomes
    float32 in ``[0, 1]`` (see :func:`images_as_float`)."""
    import torch

    if args and isinstance(args[0], torch.Tensor) and args[0].dtype == torch.uint8:
        return (images_as_float(args[0]), *args[1:])
    return None


def read_images_as_float(model: Any) -> Any:
    """``model`` (an ``nn.Module`` on images), reading ``uint8`` inputs as float32 in
    ``[0, 1]`` from now on; returned for chaining. Idempotent."""
    hooks = getattr(model, "_forward_pre_hooks", {})
    if not any(h is _images_as_float_hook for h in hooks.values()):
        model.register_forward_pre_hook(_images_as_float_hook)
    return model


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

    Images are float32 in ``[0, 1]``, or ``uint8`` (0-255) to save memory: every model
    reads those as ``x / 255`` (:func:`images_as_float`).

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
