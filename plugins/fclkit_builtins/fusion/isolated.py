"""The ``isolated`` fusion: no fusion, every client keeps its own model."""

from __future__ import annotations

from collections.abc import Sequence

from fclkit.interfaces import KnowledgeFusion
from fclkit.messages import Failure, FusionResult, RoundInfo, Upload


class Isolated(KnowledgeFusion):
    name = "isolated"
    description = "no fusion: every client keeps its own model (local-only baseline)"

    def fuse(self, round_info: RoundInfo, uploads: Sequence[Upload],
             failures: Sequence[Failure]) -> FusionResult:
        return FusionResult(downloads={})
