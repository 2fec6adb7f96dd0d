"""Built-in fusions that need no foundation model: ``fedavg`` and ``isolated``."""

from __future__ import annotations

from collections.abc import Sequence

import attrs

import fclkit
from fclkit.config import one_of, setting
from fclkit.interfaces import KnowledgeFusion
from fclkit.messages import Download, Failure, FusionResult, RoundInfo, Upload


def weighted_average(states: Sequence[dict], weights: Sequence[float]) -> dict:
    """Average floating-point tensors with ``weights``; other tensors come from the first."""
    import torch

    total = float(sum(weights))
    out = {}
    for key, first in states[0].items():
        if torch.is_floating_point(first):
            acc = torch.zeros_like(first, dtype=torch.float64)
            for state, w in zip(states, weights, strict=True):
                acc += state[key].to(torch.float64) * (w / total)
            out[key] = acc.to(first.dtype)
        else:
            out[key] = first.clone()
    return out


class FedAvg(KnowledgeFusion):
    name = "fedavg"
    description = "FedAvg: weighted average of the small models (homogeneous architectures)"
    requires_homogeneous_models = True

    @attrs.frozen
    class Options:
        weighting: str = setting(
            "examples", "weight of each client: 'examples' (its example count) or 'uniform'",
            one_of("examples", "uniform"))

    def fuse(self, round_info: RoundInfo, uploads: Sequence[Upload],
             failures: Sequence[Failure]) -> FusionResult:
        if not uploads:
            return FusionResult(downloads={})
        weights = [u.num_examples if self.options.weighting == "examples" else 1.0
                   for u in uploads]
        avg = weighted_average([u.small_state for u in uploads], weights)
        return FusionResult(
            downloads={cid: Download(small_state=avg) for cid in self.context.client_ids},
            metadata={"fused_clients": [u.client_id for u in uploads]})


class Isolated(KnowledgeFusion):
    name = "isolated"
    description = "no fusion: every client keeps its own model (local-only baseline)"

    def fuse(self, round_info: RoundInfo, uploads: Sequence[Upload],
             failures: Sequence[Failure]) -> FusionResult:
        return FusionResult(downloads={})


@fclkit.hookimpl
def register_fusions(register):
    register(FedAvg)
    register(Isolated)
