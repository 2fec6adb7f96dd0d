"""The ``fedavg`` fusion and its averaging helpers (weighted mean, median, trimmed mean).

Importing this module is light: torch loads when states are averaged.
"""

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


def robust_average(states: Sequence[dict], method: str, trim_fraction: float) -> dict:
    """Coordinate-wise ``median`` or ``trimmed-mean`` of floating-point tensors (unweighted).

    The trimmed mean drops the ``trim_fraction`` largest and smallest values of
    every coordinate (at least one each when there are three or more clients).
    """
    import torch

    out = {}
    n = len(states)
    for key, first in states[0].items():
        if not torch.is_floating_point(first):
            out[key] = first.clone()
            continue
        stacked = torch.stack([s[key].to(torch.float64) for s in states])
        if method == "median":
            value = stacked.median(dim=0).values if n % 2 else stacked.quantile(0.5, dim=0)
        else:
            k = int(n * trim_fraction)
            if k == 0 and n >= 3 and trim_fraction > 0:
                k = 1
            ordered = stacked.sort(dim=0).values
            value = ordered[k:n - k].mean(dim=0)
        out[key] = value.to(first.dtype)
    return out


def _trim(inst, attribute, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 0.5:
        raise fclkit.ConfigError(attribute.name, value, "must be a number in [0, 0.5)")


class FedAvg(KnowledgeFusion):
    name = "fedavg"
    description = "FedAvg: weighted average of the small models (homogeneous architectures)"
    requires_homogeneous_models = True

    @attrs.frozen
    class Options:
        weighting: str = setting(
            "examples", "weight of each client in the mean: 'examples' (its example count) "
            "or 'uniform'", one_of("examples", "uniform"))
        aggregation: str = setting(
            "mean", "'mean' (FedAvg), or a robust coordinate-wise 'median' or 'trimmed-mean' "
            "(both unweighted)", one_of("mean", "median", "trimmed-mean"))
        trim_fraction: float = setting(
            0.1, "fraction of largest and smallest values dropped per coordinate by "
            "'trimmed-mean'", _trim)

    def fuse(self, round_info: RoundInfo, uploads: Sequence[Upload],
             failures: Sequence[Failure]) -> FusionResult:
        if not uploads:
            return FusionResult(downloads={})
        states = [u.small_state for u in uploads]
        if self.options.aggregation == "mean":
            weights = [u.num_examples if self.options.weighting == "examples" else 1.0
                       for u in uploads]
            avg = weighted_average(states, weights)
        else:
            avg = robust_average(states, self.options.aggregation, self.options.trim_fraction)
        return FusionResult(
            downloads={cid: Download(small_state=avg) for cid in self.context.client_ids},
            metadata={"fused_clients": [u.client_id for u in uploads]})
