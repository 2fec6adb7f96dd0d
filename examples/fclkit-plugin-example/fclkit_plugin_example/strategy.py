"""The ``l2-anchor`` strategy, written directly in PyTorch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

import fclkit
from fclkit.config import positive_float, setting


class L2Anchor(fclkit.ContinualStrategy):
    name = "l2-anchor"
    description = "fine-tuning with an L2 pull towards the weights of the previous task"

    @attrs.frozen
    class Options:
        strength: float = setting(1.0, "weight of the L2 pull towards the previous task",
                                  positive_float)

    def __init__(self, model, options, context):
        super().__init__(model, options, context)
        self.anchor: dict[str, Any] | None = None  # weights at the end of the previous task

    def train_round(self, task, *, round_info, epochs, extra_losses: Sequence = ()):
        import torch
        import torch.nn.functional as F

        ctx = self.context
        opt = torch.optim.SGD(self.model.parameters(), lr=ctx.lr, momentum=ctx.momentum,
                              weight_decay=ctx.weight_decay)
        self.model.train()
        n, total, steps = task.num_train, 0.0, 0
        for _ in range(epochs):
            order = torch.randperm(n)
            for start in range(0, n, ctx.batch_size):
                idx = order[start:start + ctx.batch_size]
                x, y = task.x_train[idx].to(ctx.device), task.y_train[idx].to(ctx.device)
                logits = self.model(x)
                loss = F.cross_entropy(logits, y)
                if self.anchor is not None:
                    pull = sum(((p - self.anchor[k]) ** 2).sum()
                               for k, p in self.model.named_parameters())
                    loss = loss + self.options.strength * pull
                for term in extra_losses:
                    loss = loss + term(x, y, logits)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total, steps = total + loss.item(), steps + 1
        if round_info.is_last_round:  # the task ends: anchor to where it ended
            self.anchor = {k: p.detach().clone() for k, p in self.model.named_parameters()}
        return fclkit.TrainReport(num_examples=n, loss=total / max(steps, 1), steps=steps)

    def state_dict(self) -> dict[str, Any]:
        return {"anchor": self.anchor}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        anchor = state.get("anchor")
        self.anchor = None if anchor is None else {k: v.clone() for k, v in anchor.items()}
