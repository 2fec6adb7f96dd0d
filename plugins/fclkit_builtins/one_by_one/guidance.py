"""One-by-one's client side: the foundation model guides the small models (SMCF).

Small Model Continual Fine-tuning: each client's small model also distils the
client's personalised FM part,
``guidance_weight * tau^2 * KL(p_FM || p_small)``, restricted to the classes that
FM part has been fused on (none before the first fusion, so no guidance then).
``guidance_examples`` uses each example's label to skip where the FM would
mislead: ``"fm-correct"`` keeps the examples the FM classifies correctly,
``"fm-better"`` those where the FM gives the true class more probability than
the small model does (examples of classes the FM does not know are kept in
both, unless ``guidance_unknown_classes`` is false): each skipped example gets
weight 0 in the batch mean, each kept one the same weight as in ``"all"``. The
FM's backbone features are cached by the FM, so the guidance costs a head pass
per mini-batch.

With ``calibration = "gaussian"`` (our addition, not the paper's; docs/method.md) each
client also uploads, for every class of its current task, the count, mean and variance
of the frozen backbone's features of its private examples (:meth:`FMGuidance.payload`):
statistics of what the FM's trainable part sees, never an example.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fclkit.interfaces import ClientRound, ClientSide, ExtraLoss


class FMGuidance(ClientSide):
    """Adds the FM-guidance term to every mini-batch of the small model's training."""

    def extra_losses(self, round: ClientRound) -> Sequence[ExtraLoss]:
        fm, options = round.foundation_model, self.options
        if fm is None or options.guidance_weight == 0 or not round.fm_classes:
            return []
        import torch

        from .distillation import kd_loss_to_targets, soft_targets

        classes = torch.tensor(round.fm_classes, dtype=torch.long)
        weight, tau, mode = (options.guidance_weight, options.guidance_temperature,
                             options.guidance_examples)
        unknown = getattr(options, "guidance_unknown_classes", True)

        def fm_guidance(x: Any, y: Any, logits: Any) -> Any:
            with torch.no_grad():
                teacher = fm.forward(x).to(logits.device)
            targets = soft_targets(teacher, tau, classes)
            if mode == "all" and unknown:
                return weight * kd_loss_to_targets(logits, targets, tau, classes)
            cols, y = classes.to(logits.device), y.to(logits.device)
            fm_probs = teacher.index_select(1, cols).softmax(dim=1)
            known = torch.isin(y, cols)
            if mode == "all":
                helps = torch.ones_like(known)
            elif mode == "fm-better":  # p(true class): FM against the small model
                hit = cols.unsqueeze(0) == y.unsqueeze(1)
                small_probs = logits.detach().index_select(1, cols).softmax(dim=1)
                helps = (fm_probs * hit).sum(1) > (small_probs * hit).sum(1)
            else:  # "fm-correct"
                helps = cols[fm_probs.argmax(dim=1)] == y
            # examples of classes the FM does not know: always, or never (the option)
            keep = (~known if unknown else torch.zeros_like(known)) | (known & helps)
            return weight * kd_loss_to_targets(logits, targets, tau, classes,
                                               weights=keep.float())

        return [fm_guidance]

    def payload(self, round: ClientRound) -> dict[str, Any]:
        """``calibration = "gaussian"``: per class of the task, the count, mean and
        per-dimension variance of the backbone features of the client's examples."""
        fm = round.foundation_model
        if fm is None or getattr(self.options, "calibration", "none") == "none":
            return {}
        import torch

        task = round.task
        with torch.no_grad():
            z = fm.precompute(task.x_train).float().cpu()
        y = task.y_train.cpu()
        classes = sorted({int(c) for c in y.tolist()})
        count, mean, var = [], [], []
        for c in classes:
            zc = z[y == c]
            count.append(len(zc))
            mean.append(zc.mean(0))
            var.append(zc.var(0, unbiased=False))
        return {"feature_classes": torch.tensor(classes, dtype=torch.long),
                "feature_count": torch.tensor(count, dtype=torch.float32),
                "feature_mean": torch.stack(mean), "feature_var": torch.stack(var)}
