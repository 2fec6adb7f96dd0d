"""Messages between server and clients, as plain data.

A message is a few tensors in state dicts plus small JSON-able metadata, so the
same client and server code can run in-process (the ``local`` engine) or be
carried by a distributed engine such as Flower.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    import torch

StateDict = Mapping[str, "torch.Tensor"]


def state_nbytes(state: StateDict | None) -> int:
    """Bytes the tensors of a state dict occupy on the wire (raw tensor payload)."""
    if not state:
        return 0
    return int(sum(t.numel() * t.element_size() for t in state.values()))


@attrs.frozen(eq=False)
class RoundInfo:
    """Where in the run a message belongs."""

    task: int  # 0-based task index
    round: int  # 0-based round index within the task
    rounds_per_task: int
    #: the ids of the clients that train in this round (``participation``, late joiners);
    #: None: every client
    participants: tuple[int, ...] | None = None
    #: the participants for which this is their last round of the task (they consolidate
    #: it: a client that sits out the task's last round closes the task earlier); None:
    #: the task's last round is every client's
    closing: tuple[int, ...] | None = None
    #: set in a client's view (:meth:`for_client`): whether it is that client's last round
    client_last: bool | None = None

    @property
    def is_last_round(self) -> bool:
        """The task's last round -- in a client's view (:meth:`for_client`), the last
        round of the task that client trains in."""
        if self.client_last is not None:
            return self.client_last
        return self.round == self.rounds_per_task - 1

    def for_client(self, client_id: int) -> RoundInfo:
        """This round as client ``client_id`` trains it (an engine passes it to the client)."""
        if self.closing is None:
            return self
        return attrs.evolve(self, client_last=client_id in self.closing)


def _classes(value: Any) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise TypeError(f"classes must be a list of integers, not {type(value).__name__}")
    return tuple(int(c) for c in value)


def _tensors(value: Any, what: str) -> dict[str, torch.Tensor] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise TypeError(f"{what} must be a mapping of tensors, not {type(value).__name__}")
    return dict(value)


@attrs.frozen(eq=False)
class Upload:
    """What a client sends to the server after training a round.

    ``small_state`` is the small model's weights; ``fm_state`` the FM's trainable
    part when the method has its clients train it (``ClientSide.trains``);
    ``payload`` what the method's client side adds (``ClientSide.payload``: e.g.
    outputs on the public set, class prototypes).
    """

    client_id: int
    architecture: str
    classes_seen: tuple[int, ...]
    num_examples: int
    small_state: dict[str, torch.Tensor]
    metadata: dict[str, Any] = attrs.field(factory=dict)
    fm_state: dict[str, torch.Tensor] | None = None
    payload: dict[str, torch.Tensor] = attrs.field(factory=dict)

    @property
    def nbytes(self) -> int:
        return (state_nbytes(self.small_state) + state_nbytes(self.fm_state)
                + state_nbytes(self.payload))

    def to_state(self) -> dict[str, Any]:
        """The upload as a state (tensors and JSON values) for checkpoints and the wire."""
        return {"client_id": self.client_id, "architecture": self.architecture,
                "classes_seen": list(self.classes_seen), "num_examples": self.num_examples,
                "small_state": self.small_state, "fm_state": self.fm_state,
                "payload": self.payload, "metadata": dict(self.metadata)}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Upload:
        """Inverse of :meth:`to_state`; a malformed state raises ``KeyError``, ``TypeError``
        or ``ValueError`` naming the field."""
        if not isinstance(state, Mapping):
            raise TypeError(f"an upload must be a mapping, not {type(state).__name__}")
        return cls(client_id=int(state["client_id"]), architecture=str(state["architecture"]),
                   classes_seen=_classes(state["classes_seen"]),
                   num_examples=state["num_examples"],
                   small_state=_tensors(state["small_state"], "small_state") or {},
                   metadata=dict(state.get("metadata") or {}),
                   fm_state=_tensors(state.get("fm_state"), "fm_state"),
                   payload=_tensors(state.get("payload"), "payload") or {})


@attrs.frozen(eq=False)
class Download:
    """What the server sends to one client: any part may be ``None`` (unchanged).

    ``fm_classes`` are the classes the FM part ``fm_state`` was fused on: it predicts
    among these only (``None``: among every class). The global FM part travels as a
    Download too (the server's :meth:`~fclkit.runtime.server.Server.global_fm`).
    """

    small_state: dict[str, torch.Tensor] | None = None
    fm_state: dict[str, torch.Tensor] | None = None
    metadata: dict[str, Any] = attrs.field(factory=dict)
    fm_classes: tuple[int, ...] | None = None
    #: tensors the method's server sends besides weights (e.g. synthetic examples); the
    #: client hands the download to its method's ``ClientSide.receive``
    payload: dict[str, torch.Tensor] = attrs.field(factory=dict)

    @property
    def nbytes(self) -> int:
        return (state_nbytes(self.small_state) + state_nbytes(self.fm_state)
                + state_nbytes(self.payload))

    def to_state(self) -> dict[str, Any]:
        """The download as a state (tensors and JSON values) for checkpoints and the wire."""
        return {"small_state": self.small_state, "fm_state": self.fm_state,
                "fm_classes": None if self.fm_classes is None else list(self.fm_classes),
                "metadata": dict(self.metadata), "payload": self.payload}

    @classmethod
    def from_state(cls, state: Mapping[str, Any] | None) -> Download | None:
        """Inverse of :meth:`to_state` (``None`` stays ``None``)."""
        if state is None:
            return None
        if not isinstance(state, Mapping):
            raise TypeError(f"a download must be a mapping, not {type(state).__name__}")
        classes = state.get("fm_classes")
        return cls(small_state=_tensors(state.get("small_state"), "small_state"),
                   fm_state=_tensors(state.get("fm_state"), "fm_state"),
                   metadata=dict(state.get("metadata") or {}),
                   fm_classes=None if classes is None else _classes(classes),
                   payload=_tensors(state.get("payload"), "payload") or {})


@attrs.frozen(eq=False)
class Failure:
    """A client that did not deliver an upload in a round, and why.

    ``error`` is the exception, when the client raised in this process (it becomes the
    cause of the error a run stops with; it never travels between processes).
    """

    client_id: int
    reason: str
    error: BaseException | None = attrs.field(default=None, repr=False)


@attrs.frozen(eq=False)
class FusionResult:
    """What a KnowledgeFusion returns after a round."""

    downloads: dict[int, Download]
    global_fm_state: dict[str, torch.Tensor] | None = None
    #: classes the global FM part has been fused on: it predicts only among these
    #: (None: among every class), as ``Download.fm_classes`` says of a client's part.
    global_fm_classes: tuple[int, ...] | None = None
    metadata: dict[str, Any] = attrs.field(factory=dict)
