"""Research use without packaging: subclass an interface and run it through the Python API.

    python examples/research_strategy.py

Defines a continual-learning strategy in plain PyTorch (a tiny replay of the
last task's examples), runs it against fclkit's built-in ``naive`` strategy on
the offline digits benchmark, and prints both final average accuracies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

import fclkit
from fclkit.config import int_at_least, setting


class TinyReplay(fclkit.ContinualStrategy):
    name = "tiny-replay"
    description = "fine-tuning that mixes in up to `memory` stored examples of past tasks"

    @attrs.frozen
    class Options:
        memory: int = setting(100, "examples kept from each past task", int_at_least(1))

    def __init__(self, model, options, context):
        super().__init__(model, options, context)
        self.memory_x: Any = None
        self.memory_y: Any = None

    def train_round(self, task, *, round_info, epochs, extra_losses: Sequence = ()):
        import torch
        import torch.nn.functional as F

        ctx = self.context
        x_all, y_all = task.x_train, task.y_train
        if self.memory_x is not None:
            x_all = torch.cat([x_all, self.memory_x])
            y_all = torch.cat([y_all, self.memory_y])
        opt = torch.optim.SGD(self.model.parameters(), lr=ctx.lr, momentum=ctx.momentum)
        self.model.train()
        total, steps = 0.0, 0
        for _ in range(epochs):
            order = torch.randperm(len(y_all))
            for start in range(0, len(y_all), ctx.batch_size):
                idx = order[start:start + ctx.batch_size]
                logits = self.model(x_all[idx])
                loss = F.cross_entropy(logits, y_all[idx])
                for term in extra_losses:
                    loss = loss + term(x_all[idx], y_all[idx], logits)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total, steps = total + loss.item(), steps + 1
        if round_info.is_last_round:
            keep = torch.randperm(task.num_train)[: self.options.memory]
            new_x, new_y = task.x_train[keep], task.y_train[keep]
            self.memory_x = new_x if self.memory_x is None else torch.cat([self.memory_x, new_x])
            self.memory_y = new_y if self.memory_y is None else torch.cat([self.memory_y, new_y])
        return fclkit.TrainReport(num_examples=task.num_train, loss=total / max(steps, 1),
                                  steps=steps)

    def state_dict(self) -> dict[str, Any]:
        return {"memory_x": self.memory_x, "memory_y": self.memory_y}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.memory_x, self.memory_y = state.get("memory_x"), state.get("memory_y")


def main(output: str = "runs") -> dict[str, float]:
    base = fclkit.ExperimentConfig(fusion="fedavg", clients=3, tasks=5, output=output)
    scores = {}
    for cl in ("naive", "tiny-replay"):
        result = fclkit.run(base.evolve(cl=cl), components=[TinyReplay])
        scores[cl] = result.summary("small")["average_accuracy"]
        print(f"{cl:12s} final average accuracy {100 * scores[cl]:.1f}%  ->  {result.run_dir}")
    return scores


if __name__ == "__main__":
    main()
