"""PILoRA's client side: the current task's LoRA and class prototypes, trained on the
client's private data.

Every round of task t a client trains, with Adam,

* the task-t block of the FM's LoRA adapters (:mod:`.lora`; the backbone and the
  blocks of the old tasks stay frozen, their sum still applied), and
* the prototypes of the task's classes (rows of the FM's linear head,
  :mod:`.prototypes`; the old classes' prototypes stay frozen),

on ``L = CE(-dist / T, y) + prototype_weight * PL + orthogonal_weight * sum |A_old A_t^T|
+ l1_weight * sum |A_t|``, the distances taken to the prototypes of every class the
client knows (old and new). Both learning rates follow a cosine over the task's rounds.
The upload carries the trained FM part and, as payload, the client's class means of
the features seen in its last local epoch (for the server's prototype re-weighting).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from fclkit.errors import ConfigError, FclkitError
from fclkit.interfaces import ClientRound, ClientSide, TrainReport

from . import lora, prototypes

#: payload keys: the classes and their feature means and counts (last local epoch)
PAYLOAD_CLASSES, PAYLOAD_MEANS, PAYLOAD_COUNTS = "classes", "feature_means", "feature_counts"


def prototype_head(fm: Any) -> Any:
    """The FM's linear head (its rows are the prototypes), or a one-line error."""
    from torch import nn

    head = getattr(fm, "head", None)
    if not isinstance(head, nn.Linear):
        raise ConfigError("fm_options.head", getattr(getattr(fm, "options", None), "head", None),
                          "fusion 'pilora' keeps its class prototypes in the FM's linear head",
                          hint="use --fm-opt head=linear (pilora's default)")
    return head


def cosine(base: float, round_index: int, rounds: int, on: bool) -> float:
    """``base * (1 + cos(pi * round / rounds)) / 2`` (``base`` when ``on`` is false)."""
    if not on:
        return base
    return base * 0.5 * (1.0 + math.cos(math.pi * round_index / max(rounds, 1)))


class PILoRAClient(ClientSide):
    """Trains the current task's LoRA block and prototypes (see the module docstring)."""

    trains = frozenset({"fm"})

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self.classes: list[int] = []  # classes this client has trained prototypes of
        self._payload: dict[str, Any] = {}  # this round's feature means (not state)

    def train_foundation(self, round: ClientRound) -> TrainReport:
        import torch

        o = self.options
        fm = round.foundation_model
        if fm is None:
            raise FclkitError("fusion 'pilora' trains the foundation model's part, and the "
                              "run has none", hint="pass --fm hf")
        head = prototype_head(fm)
        pairs = lora.lora_pairs(fm.backbone)
        t = round.round_info.task
        lora.check_capacity(pairs, o.rank, t)
        task = round.task
        x, y = task.x_train, task.y_train
        new = sorted(int(c) for c in task.classes)
        known = sorted(set(round.fm_classes) | set(self.classes) | set(new))
        cols = torch.tensor(known, dtype=torch.long, device=head.weight.device)
        position = torch.full((round.context.num_classes,), -1, dtype=torch.long)
        position[torch.tensor(known)] = torch.arange(len(known))
        proto_mask = torch.zeros_like(head.weight)
        proto_mask[torch.tensor(new, dtype=torch.long)] = 1.0

        if o.prototype_init == "mean" and round.round_info.round == 0:
            self._init_prototypes(fm, head, x, y, new)
        epochs = o.epochs or round.epochs
        info = round.round_info
        lr_lora = cosine(o.lora_lr, info.round, info.rounds_per_task, o.cosine)
        lr_proto = cosine(o.prototype_lr, info.round, info.rounds_per_task, o.cosine)
        lora_params = [q for p in pairs for q in (p.A, p.B)]
        optimizer = torch.optim.Adam([{"params": lora_params, "lr": lr_lora},
                                      {"params": [head.weight], "lr": lr_proto}])
        frozen = [(q, m, q.detach().clone()) for q, m in
                  [*lora.block_masks(pairs, t, o.rank), (head.weight, proto_mask)]]
        handles = lora.mask_gradients((q, m) for q, m, _ in frozen)
        dim = int(head.weight.shape[1])
        sums = torch.zeros(len(new), dim, dtype=torch.float64)
        counts = torch.zeros(len(new), dtype=torch.long)
        new_pos = {c: i for i, c in enumerate(new)}
        bs, losses = round.context.batch_size, []
        try:
            for epoch in range(epochs):
                last = epoch == epochs - 1
                for idx in torch.randperm(len(y)).split(bs):
                    feats = fm.features(x[idx])
                    yb = y[idx]
                    dist = prototypes.distances(feats, head.weight.index_select(0, cols))
                    loss, _, _ = prototypes.dce_loss(dist, position[yb].to(dist.device),
                                                     o.temperature, o.prototype_weight)
                    if o.orthogonal_weight:
                        loss = loss + o.orthogonal_weight * lora.orthogonality_loss(
                            pairs, t, o.rank)
                    if o.l1_weight:
                        loss = loss + o.l1_weight * lora.l1_norm(pairs, t, o.rank)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    losses.append(float(loss.detach()))
                    if last:  # the class means of the features of the last epoch
                        f64 = feats.detach().cpu().to(torch.float64)
                        rows = torch.tensor([new_pos[int(c)] for c in yb])
                        sums.index_add_(0, rows, f64)
                        counts += torch.bincount(rows, minlength=len(new))
        finally:
            for h in handles:
                h.remove()
            optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for q, m, before in frozen:  # the masks kept them; make it exact
                keep = m == 0
                q[keep] = before[keep]
            head.bias.copy_(prototypes.head_bias(head.weight))
        self.classes = sorted(set(self.classes) | set(new))
        seen = counts > 0
        self._payload = {
            PAYLOAD_CLASSES: torch.tensor(new, dtype=torch.long)[seen],
            PAYLOAD_MEANS: (sums[seen] / counts[seen].unsqueeze(1)).to(torch.float32),
            PAYLOAD_COUNTS: counts[seen]}
        return TrainReport(num_examples=len(y),
                           loss=sum(losses) / len(losses) if losses else float("nan"),
                           steps=len(losses))

    @staticmethod
    def _init_prototypes(fm: Any, head: Any, x: Any, y: Any, new: list[int]) -> None:
        """Each new class's prototype := the mean feature of this client's examples of it
        (classes it has no example of keep theirs)."""
        import torch

        with torch.no_grad():
            feats = fm.features(x).to(head.weight.dtype)
            for c in new:
                rows = (y == c).to(feats.device)
                if bool(rows.any()):
                    head.weight[c] = feats[rows].mean(0).to(head.weight.device)

    def payload(self, round: ClientRound) -> dict[str, Any]:
        out, self._payload = self._payload, {}
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"classes": list(self.classes)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.classes = [int(c) for c in state.get("classes", [])]
