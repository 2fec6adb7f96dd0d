"""Baseline fusion ``fedprox``: FedProx (Li et al., "Federated Optimization in Heterogeneous
Networks", MLSys 2020).

Server: FedAvg (the ``fedavg`` fusion, with its options). Client: the small model
minimises its strategy's loss plus the proximal term

    (mu / 2) * ||w - w_global||^2

where ``w_global`` are the weights the client received for this round (the server's
average; at the first round of the run, the clients' common initial weights). The
term is one of the method's ``extra_losses``, so it is added to every mini-batch of
whichever continual-learning strategy ``--cl`` names (replayed examples' batches too).
``mu = 0`` is FedAvg exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from fclkit.config import float_in, setting
from fclkit.interfaces import ClientRound, ClientSide, ExtraLoss
from fclkit_builtins.fusion.fedavg import FedAvg


def proximal_term(model: Any, mu: float) -> ExtraLoss:
    """``term(x, y, logits) = mu/2 * ||w - w0||^2`` over ``model``'s trainable parameters,
    ``w0`` being their values now (copied; the live parameters are closed over)."""
    params = [p for p in model.parameters() if p.requires_grad]
    anchors = [p.detach().clone() for p in params]
    half_mu = 0.5 * float(mu)

    def fedprox_proximal(x: Any, y: Any, logits: Any) -> Any:
        total = logits.new_zeros(())
        for p, a in zip(params, anchors, strict=True):
            total = total + ((p - a) ** 2).sum()
        return half_mu * total

    return fedprox_proximal


class ProximalClient(ClientSide):
    """FedProx's client half: the proximal term towards the weights received this round."""

    def extra_losses(self, round: ClientRound) -> Sequence[ExtraLoss]:
        mu = float(self.options.mu)
        if mu == 0:
            return []
        # built at the start of the round, after the client loaded the server's weights:
        # the snapshot is w_global
        return [proximal_term(round.small_model, mu)]


class FedProx(FedAvg):
    name = "fedprox"
    description = ("FedProx (Li et al. 2020): FedAvg + a proximal term mu/2 ||w - w_global||^2 "
                   "in the clients' loss (homogeneous architectures)")
    ClientSide = ProximalClient

    @attrs.frozen
    class Options(FedAvg.Options):
        mu: float = setting(
            0.01, "clients: weight mu of the proximal term mu/2 ||w - w_global||^2 added to "
            "the small model's loss (the paper tries 0.001, 0.01, 0.1, 1; 0 is FedAvg)",
            float_in(0.0, 1e6))
