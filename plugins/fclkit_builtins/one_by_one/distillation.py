"""Knowledge distillation between logits: the loss of one-by-one's server fusion and of its
clients' FM guidance (and of any method that imports it); and the plain cross-entropy
training of an FM part on precomputed features that fm-only and the calibration share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _columns(classes: Sequence[int] | Any, device: Any) -> Any:
    import torch

    return torch.as_tensor(classes, dtype=torch.long, device=device)


def soft_targets(teacher_logits: Any, temperature: float,
                 classes: Sequence[int] | Any | None = None) -> Any:
    """``softmax(teacher/tau)``, restricted (and renormalised) to ``classes`` if given.

    Compute it once when the teacher's logits are fixed (server distillation goes
    over the same public set for many epochs) and pass rows of it to
    :func:`kd_loss_to_targets`.
    """
    import torch.nn.functional as F

    if classes is not None:
        teacher_logits = teacher_logits.index_select(1, _columns(classes, teacher_logits.device))
    return F.softmax(teacher_logits / float(temperature), dim=1)


def kd_loss_to_targets(student_logits: Any, targets: Any, temperature: float,
                       classes: Sequence[int] | Any | None = None,
                       weights: Any | None = None) -> Any:
    """``tau^2 * KL(targets || softmax(student/tau))``, batch mean; ``targets`` from
    :func:`soft_targets` with the same ``classes``. ``weights`` (one per row) scale
    each row's KL before the mean."""
    import torch.nn.functional as F

    if classes is not None:
        student_logits = student_logits.index_select(1, _columns(classes, student_logits.device))
    tau = float(temperature)
    log_p = F.log_softmax(student_logits / tau, dim=1)
    if weights is None:
        return F.kl_div(log_p, targets, reduction="batchmean") * tau * tau
    per_row = F.kl_div(log_p, targets, reduction="none").sum(dim=1)
    return (per_row * weights).mean() * tau * tau


def kd_loss(student_logits: Any, teacher_logits: Any, temperature: float,
            classes: Sequence[int] | Any | None = None) -> Any:
    """``tau^2 * KL(softmax(teacher/tau) || softmax(student/tau))``, batch mean.

    With ``classes``, both distributions are restricted (and renormalised) to
    those columns: a teacher only speaks about the classes it has seen.
    """
    return kd_loss_to_targets(student_logits,
                              soft_targets(teacher_logits, temperature, classes).to(
                                  student_logits.device), temperature, classes)


def fit_on_features(fm: Any, z: Any, target: Any, columns: Any, *, epochs: int,
                    batch_size: int, lr: float, generator: Any) -> None:
    """Train ``fm``'s trainable part in place: cross-entropy of its logits restricted to
    ``columns`` (class ids) against ``target`` (positions in ``columns``) on the
    precomputed features ``z``, ``epochs`` passes of mini-batches drawn with
    ``generator``, Adam at ``lr``."""
    import torch
    import torch.nn.functional as F

    optimizer = torch.optim.Adam(fm.trainable_parameters(), lr=lr)
    for _ in range(epochs):
        perm = torch.randperm(len(target), generator=generator)
        for i in range(0, len(target), batch_size):
            idx = perm[i:i + batch_size]
            logits = fm.forward_precomputed(z[idx])
            loss = F.cross_entropy(logits.index_select(1, columns.to(logits.device)),
                                   target[idx].to(logits.device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
