"""The server: holds the fusion and the global foundation-model state."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..interfaces import KnowledgeFusion
from ..messages import Failure, FusionResult, RoundInfo, Upload

#: key under which :meth:`Server.global_fm` passes the global part's classes to the
#: clients' evaluation (a long tensor inside the state dict, so every engine carries it)
CLASSES_KEY = "fclkit.fm_classes"


def split_fm_classes(state: Any) -> tuple[Any, list[int] | None]:
    """(the state without :data:`CLASSES_KEY`, its classes or None)."""
    if state is None or CLASSES_KEY not in state:
        return state, None
    rest = {k: v for k, v in state.items() if k != CLASSES_KEY}
    return rest, [int(c) for c in state[CLASSES_KEY].tolist()]


class Server:
    """Calls the configured :class:`KnowledgeFusion` after every round."""

    def __init__(self, fusion: KnowledgeFusion) -> None:
        self.fusion = fusion
        self.global_fm_state: dict[str, Any] | None = None
        self.global_fm_classes: list[int] | None = None

    def aggregate(self, round_info: RoundInfo, uploads: Sequence[Upload],
                  failures: Sequence[Failure]) -> FusionResult:
        result = self.fusion.fuse(round_info, list(uploads), list(failures))
        if result.global_fm_state is not None:
            self.global_fm_state = result.global_fm_state
            self.global_fm_classes = (None if result.global_fm_classes is None
                                      else sorted(result.global_fm_classes))
        return result

    def global_fm(self) -> dict[str, Any] | None:
        """The global FM part as the clients evaluate it (its classes included)."""
        if self.global_fm_state is None or self.global_fm_classes is None:
            return self.global_fm_state
        import torch

        return {**self.global_fm_state,
                CLASSES_KEY: torch.tensor(self.global_fm_classes, dtype=torch.long)}

    def state_dict(self) -> dict[str, Any]:
        return {"fusion": self.fusion.state_dict(), "global_fm_state": self.global_fm_state,
                "global_fm_classes": self.global_fm_classes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fusion.load_state_dict(state.get("fusion", {}))
        self.global_fm_state = state.get("global_fm_state")
        self.global_fm_classes = state.get("global_fm_classes")
