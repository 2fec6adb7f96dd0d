"""Incremental LoRA on top of peft's LoRA layers: one rank-``r`` LoRA per task.

The foundation model is built with one peft LoRA adapter of rank ``r x tasks`` per
target module (:meth:`PILoRA.foundation_model_options` asks for it). Its ``lora_A``
(``(r * tasks, d_in)``) and ``lora_B`` (``(d_out, r * tasks)``) are cut into task
blocks: task ``t`` owns rows ``t*r .. (t+1)*r`` of A and the same columns of B, so the
layer's update is

    B A x * scaling  =  sum over tasks t of  B_t A_t x * scaling

-- the frozen sum of the old tasks' LoRAs plus the current task's one, exactly as
separate rank-``r`` adapters would give. A block starts as peft initialises it (A
Kaiming-uniform, B zero: no change to the backbone until it trains); blocks of later
tasks keep B at zero and so add nothing.

While task ``t`` trains, gradient masks keep every other block's gradient at zero
(:func:`mask_gradients`), so the optimiser never moves them, and the orthogonality
loss (:func:`orthogonality_loss`) keeps the new A_t away from the frozen A_0..A_{t-1}.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs

from fclkit.errors import FclkitError


@attrs.frozen(eq=False)
class LoraPair:
    """One peft LoRA layer's A and B weights (live parameters) and its adapter name."""

    module: str  # the adapted module's name in the backbone
    adapter: str
    A: Any  # (R, d_in)
    B: Any  # (d_out, R)

    @property
    def total_rank(self) -> int:
        return int(self.A.shape[0])


def lora_pairs(backbone: Any) -> list[LoraPair]:
    """Every peft LoRA layer of ``backbone`` (one adapter each), in module order."""
    from peft.tuners.lora import LoraLayer

    pairs = []
    for name, module in backbone.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        for adapter in module.lora_A:
            pairs.append(LoraPair(name, adapter, module.lora_A[adapter].weight,
                                  module.lora_B[adapter].weight))
    return pairs


def check_capacity(pairs: list[LoraPair], rank: int, task: int) -> None:
    """Stop with one line when the adapters have no block for ``task``."""
    if not pairs:
        raise FclkitError("fusion 'pilora' found no LoRA adapter in the foundation model",
                          hint="the FM must be built with lora = true (pilora asks for it "
                          "unless fm_options say otherwise)")
    have = min(p.total_rank for p in pairs)
    if have < rank * (task + 1):
        raise FclkitError(
            f"fusion 'pilora': the FM's LoRA adapters have rank {have}, room for "
            f"{have // rank} task(s) of rank {rank}, and task {task + 1} has begun",
            hint="leave fm_options.lora_r unset: pilora sets it to rank x tasks")


def block(task: int, rank: int) -> slice:
    """Rows of A (columns of B) that belong to ``task``."""
    return slice(task * rank, (task + 1) * rank)


def orthogonality_loss(pairs: list[LoraPair], task: int, rank: int) -> Any:
    """sum over layers and old tasks i of sum |A_i A_t^T| (the old A's fixed).

    Zero when every row of the current task's A_t is orthogonal to every row of the
    frozen A_0 .. A_{t-1}; zero for the first task (nothing old).
    """
    import torch

    if task == 0 or not pairs:
        return torch.zeros(())
    total = None
    cur = block(task, rank)
    for p in pairs:
        old = p.A[: task * rank].detach()
        term = (old @ p.A[cur].t()).abs().sum()
        total = term if total is None else total + term
    return total


def l1_norm(pairs: list[LoraPair], task: int, rank: int) -> Any:
    """sum |A_t| over layers: the current task's A matrices' L1 norm."""
    import torch

    if not pairs:
        return torch.zeros(())
    cur = block(task, rank)
    return sum(p.A[cur].abs().sum() for p in pairs)


def block_masks(pairs: list[LoraPair], task: int, rank: int) -> Iterator[tuple[Any, Any]]:
    """(parameter, 0/1 mask of its current task's block) for every A and B."""
    import torch

    cur = block(task, rank)
    for p in pairs:
        mask_a = torch.zeros_like(p.A)
        mask_a[cur] = 1.0
        mask_b = torch.zeros_like(p.B)
        mask_b[:, cur] = 1.0
        yield p.A, mask_a
        yield p.B, mask_b


def mask_gradients(params_and_masks: Any) -> list[Any]:
    """Multiply each parameter's gradient by its mask from now on; returns the hook
    handles (``handle.remove()`` ends it)."""
    handles = []
    for param, mask in params_and_masks:
        handles.append(param.register_hook(lambda g, m=mask: g * m))
    return handles
