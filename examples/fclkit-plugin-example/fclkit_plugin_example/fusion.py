"""The ``fedavgm`` fusion: FedAvg with server momentum (Hsu et al., 2019)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

import fclkit
from fclkit.config import float_in, positive_float, setting


class FedAvgM(fclkit.KnowledgeFusion):
    name = "fedavgm"
    description = "FedAvg with server momentum (Hsu et al., 2019)"
    requires_homogeneous_models = True

    @attrs.frozen
    class Options:
        server_lr: float = setting(1.0, "server learning rate", positive_float)
        momentum: float = setting(0.9, "server momentum", float_in(0.0, 1.0, high_open=True))

    def setup(self, context):
        super().setup(context)
        self.weights: dict[str, Any] | None = None   # the global model
        self.velocity: dict[str, Any] | None = None

    def fuse(self, round_info, uploads: Sequence[fclkit.Upload], failures):
        import torch

        if not uploads:
            return fclkit.FusionResult(downloads={})
        total = sum(u.num_examples for u in uploads)
        average = {k: sum(u.small_state[k].double() * (u.num_examples / total)
                          for u in uploads) for k in uploads[0].small_state}
        if self.weights is None:  # first round: the clients' common starting point
            self.weights = {k: v.clone() for k, v in average.items()}
            self.velocity = {k: torch.zeros_like(v) for k, v in average.items()}
        for k, avg in average.items():
            if not torch.is_floating_point(uploads[0].small_state[k]):
                self.weights[k] = avg
                continue
            delta = self.weights[k] - avg  # the pseudo-gradient
            self.velocity[k] = self.options.momentum * self.velocity[k] + delta
            self.weights[k] = self.weights[k] - self.options.server_lr * self.velocity[k]
        dtype = {k: v.dtype for k, v in uploads[0].small_state.items()}
        state = {k: v.to(dtype[k]) for k, v in self.weights.items()}
        return fclkit.FusionResult(
            downloads={cid: fclkit.Download(small_state=state)
                       for cid in self.context.client_ids})

    def state_dict(self):
        return {"weights": self.weights, "velocity": self.velocity}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            self.weights, self.velocity = state["weights"], state["velocity"]
