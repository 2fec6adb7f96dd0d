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

    @property
    def is_last_round(self) -> bool:
        return self.round == self.rounds_per_task - 1


@attrs.frozen(eq=False)
class Upload:
    """What a client sends to the server after training a round."""

    client_id: int
    architecture: str
    classes_seen: tuple[int, ...]
    num_examples: int
    small_state: dict[str, torch.Tensor]
    metadata: dict[str, Any] = attrs.field(factory=dict)

    @property
    def nbytes(self) -> int:
        return state_nbytes(self.small_state)


@attrs.frozen(eq=False)
class Download:
    """What the server sends to one client: any part may be ``None`` (unchanged)."""

    small_state: dict[str, torch.Tensor] | None = None
    fm_state: dict[str, torch.Tensor] | None = None
    metadata: dict[str, Any] = attrs.field(factory=dict)

    @property
    def nbytes(self) -> int:
        return state_nbytes(self.small_state) + state_nbytes(self.fm_state)


@attrs.frozen(eq=False)
class Failure:
    """A client that did not deliver an upload in a round, and why."""

    client_id: int
    reason: str


@attrs.frozen(eq=False)
class FusionResult:
    """What a KnowledgeFusion returns after a round."""

    downloads: dict[int, Download]
    global_fm_state: dict[str, torch.Tensor] | None = None
    #: classes the global FM part has been fused on: it predicts only among these
    #: (None: among every class). Downloads say the same in ``metadata["fm_classes"]``.
    global_fm_classes: tuple[int, ...] | None = None
    metadata: dict[str, Any] = attrs.field(factory=dict)
