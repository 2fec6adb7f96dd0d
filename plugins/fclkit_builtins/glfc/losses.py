"""GLFC's two local losses (Dong et al., CVPR 2022, Sec. 3.2-3.3), on one mini-batch.

* :func:`compensation_weights` and :func:`gradient_compensated_ce` -- the class-aware
  gradient compensation loss ``L_GC``. For an example ``i`` of label ``y_i`` the gradient
  of the cross-entropy with respect to its ground-truth logit is ``G_i = p_{y_i} - 1``;
  the examples of the current task's (new) classes and those of the old classes
  (exemplars) are normalised separately by their group's mean ``|G|``:

      w_i = |G_i| / mean_{j in group(i)} |G_j|,    L_GC = mean_i  w_i * CE_i

  so hard examples weigh more than easy ones, within old and within new classes, and
  neither group's gradient scale swamps the other's. The weights are constants (no
  gradient flows through them), as in the paper's formula.
* :func:`relation_target` and :func:`relation_distillation` -- the class-semantic
  relation distillation loss ``L_RD``: the target of an example is the old model's
  softmax over the old classes concatenated with the one-hot label over the new classes
  (zero elsewhere), normalised to a distribution; ``L_RD`` is the KL divergence from the
  target to the model's softmax (temperature ``T``, scaled by ``T**2``).
* :func:`glfc_loss_term` -- the term the client side adds to its strategy's loss so that
  the total is GLFC's ``gc_weight * L_GC + rd_weight * L_RD`` (see its docstring).

Imports torch: only imported when a client trains.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F


def _class_mask(y: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
    """Rows of ``y`` whose label is one of ``classes``."""
    if len(classes) == 0:
        return torch.zeros_like(y, dtype=torch.bool)
    return torch.isin(y, torch.as_tensor(list(classes), dtype=y.dtype, device=y.device))


def compensation_weights(logits: torch.Tensor, y: torch.Tensor,
                         new_classes: Sequence[int]) -> torch.Tensor:
    """``w_i = |G_i| / mean |G|`` over ``i``'s group (new classes / every other class).

    ``G_i = softmax(logits_i)[y_i] - 1`` is the cross-entropy's gradient with respect to
    the ground-truth logit. A group whose mean ``|G|`` is 0 (every example predicted with
    certainty) gets weight 0: its cross-entropy is 0 as well. Returned detached.
    """
    with torch.no_grad():
        p_true = torch.softmax(logits.float(), dim=1).gather(1, y.view(-1, 1)).squeeze(1)
        g = (1.0 - p_true).abs()
        weights = torch.zeros_like(g)
        new = _class_mask(y, new_classes)
        for group in (new, ~new):
            if bool(group.any()):
                mean = g[group].mean()
                weights[group] = g[group] / mean if float(mean) > 0 else 0.0
    return weights.to(logits.dtype)


def gradient_compensated_ce(logits: torch.Tensor, y: torch.Tensor,
                            new_classes: Sequence[int]) -> torch.Tensor:
    """``L_GC = mean_i w_i * CE(logits_i, y_i)`` with :func:`compensation_weights`."""
    weights = compensation_weights(logits, y, new_classes)
    return (weights * F.cross_entropy(logits, y, reduction="none")).mean()


def relation_target(old_logits: torch.Tensor, y: torch.Tensor, old_classes: Sequence[int],
                    new_classes: Sequence[int], temperature: float = 1.0) -> torch.Tensor:
    """The relation-distillation target over every output column.

    Columns of ``old_classes``: the old model's softmax restricted to those classes (at
    ``temperature``); a row whose label is a new class also gets 1 in its label's column;
    every other column is 0. Each row is then divided by its sum (a distribution). A row
    of an old class (an exemplar) is the old model's relation among the old classes
    alone, as the authors' code has it (its one-hot label lies in the replaced columns).
    """
    num_classes = old_logits.shape[1]
    target = torch.zeros(old_logits.shape, dtype=torch.float32, device=old_logits.device)
    if len(old_classes):
        cols = torch.as_tensor(list(old_classes), dtype=torch.long, device=old_logits.device)
        target[:, cols] = torch.softmax(old_logits.float()[:, cols] / temperature, dim=1)
    new = _class_mask(y, new_classes)
    if bool(new.any()):
        rows = new.nonzero().flatten()
        target[rows, y[rows]] += 1.0
    total = target.sum(dim=1, keepdim=True)
    # a row with nothing (no old classes and a label outside the new classes) falls back
    # to its one-hot label
    empty = total.squeeze(1) == 0
    if bool(empty.any()):
        rows = empty.nonzero().flatten()
        target[rows, y[rows].clamp(0, num_classes - 1)] = 1.0
        total = target.sum(dim=1, keepdim=True)
    return target / total


def relation_distillation(logits: torch.Tensor, target: torch.Tensor,
                          temperature: float = 1.0) -> torch.Tensor:
    """``T**2 * KL(target || softmax(logits / T))``, averaged over the mini-batch."""
    log_q = F.log_softmax(logits / temperature, dim=1)
    return F.kl_div(log_q, target.to(log_q.dtype), reduction="batchmean") * temperature ** 2


def glfc_loss_term(old_model: Any, *, old_classes: Sequence[int], new_classes: Sequence[int],
                   gc_weight: float, rd_weight: float, temperature: float):
    """The extra loss ``term(x, y, logits)`` that turns a strategy's cross-entropy into GLFC's.

    The strategies this is meant for (``naive``, ``replay``, and those that add a
    penalty to the mean cross-entropy: ``ewc``, ``lwf``, ``si``, ``mas``, ``agem``,
    ``gem``) minimise ``CE(logits, y)`` averaged over the mini-batch (replay's memory
    examples included). The term returns

        gc_weight * L_GC + rd_weight * L_RD - CE(logits, y)

    so the sum the strategy minimises is GLFC's local objective (plus whatever penalty
    the strategy itself adds). ``old_model`` is the old global model (a module in eval
    mode, not trained); its outputs are computed without gradient.
    """
    old = tuple(int(c) for c in old_classes)
    new = tuple(int(c) for c in new_classes)

    def glfc_local_loss(x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, y)
        loss = gc_weight * gradient_compensated_ce(logits, y, new)
        if rd_weight:
            with torch.no_grad():
                old_logits = old_model(x)
            target = relation_target(old_logits, y, old, new, temperature)
            loss = loss + rd_weight * relation_distillation(logits, target, temperature)
        return loss - ce

    return glfc_local_loss
