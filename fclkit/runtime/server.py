"""The server: holds the fusion and the global foundation-model state."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..interfaces import KnowledgeFusion
from ..messages import Download, Failure, FusionResult, RoundInfo, Upload


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

    def global_fm(self) -> Download | None:
        """The global FM part as the clients evaluate it, with the classes it was fused on
        (as a client's own part travels); None when the run has no FM."""
        if self.global_fm_state is None:
            return None
        classes = None if self.global_fm_classes is None else tuple(self.global_fm_classes)
        return Download(fm_state=self.global_fm_state, fm_classes=classes)

    def state_dict(self) -> dict[str, Any]:
        return {"fusion": self.fusion.state_dict(), "global_fm_state": self.global_fm_state,
                "global_fm_classes": self.global_fm_classes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fusion.load_state_dict(state.get("fusion", {}))
        self.global_fm_state = state.get("global_fm_state")
        self.global_fm_classes = state.get("global_fm_classes")
