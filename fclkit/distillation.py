"""Knowledge distillation between logits (shared by client guidance and server fusion)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def kd_loss(student_logits: Any, teacher_logits: Any, temperature: float,
            classes: Sequence[int] | Any | None = None) -> Any:
    """``tau^2 * KL(softmax(teacher/tau) || softmax(student/tau))``, batch mean.

    With ``classes``, both distributions are restricted (and renormalised) to
    those columns: a teacher only speaks about the classes it has seen.
    """
    import torch
    import torch.nn.functional as F

    if classes is not None:
        idx = torch.as_tensor(classes, dtype=torch.long, device=student_logits.device)
        student_logits = student_logits.index_select(1, idx)
        teacher_logits = teacher_logits.index_select(1, idx)
    tau = float(temperature)
    return F.kl_div(F.log_softmax(student_logits / tau, dim=1),
                    F.softmax(teacher_logits / tau, dim=1),
                    reduction="batchmean") * tau * tau
