"""Baseline fusion ``feddf``: FedDF, ensemble distillation for model fusion (Lin et al.,
"Ensemble Distillation for Robust Model Fusion in Federated Learning", NeurIPS 2020).

Every round the server

1. computes the ensemble's targets on its public set, **every teacher at once**: each
   uploaded small model's softmax restricted (and renormalised) to the classes it has
   seen, averaged per class over the teachers that have seen that class, then
   renormalised (``ensemble = "probabilities"``; ``"logits"`` averages the restricted
   logits per class instead, as the paper's Algorithm 1 does with unrestricted ones);
   classes no teacher has seen get probability 0;
2. for each small-model architecture among the uploads, starts from the FedAvg of that
   architecture's uploads (the paper's initialisation) and distils the targets into it
   (KL at ``temperature``, Adam, ``epochs`` epochs over the public set); the clients of
   that architecture download it, so heterogeneous fleets work;
3. when the run has a foundation model, distils the same targets into one FM part the
   server keeps from round to round, sent to every client with the classes the teachers
   have seen (``fm_classes``) and reported as the global FM part.

The clients train their small models with their ``--cl`` strategy and upload the weights
(the default client side): FedDF changes the server only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

import fclkit
from fclkit.config import int_at_least, one_of, positive_float, setting
from fclkit.interfaces import KnowledgeFusion
from fclkit.messages import Download, Failure, FusionResult, RoundInfo, Upload
from fclkit_builtins.fusion.fedavg import weighted_average

EVAL_BATCH = 512


def ensemble_targets(teachers: Sequence[tuple[Any, Sequence[int]]], num_classes: int,
                     temperature: float = 1.0, mode: str = "probabilities") -> Any:
    """The ensemble's soft targets, ``(n, num_classes)``, from ``(logits, classes_seen)``
    per teacher: each teacher speaks only for the classes it has seen.

    ``probabilities``: per teacher ``softmax(logits/T)`` over its classes; per class the
    mean over the teachers that have seen it; rows renormalised. ``logits``: per class
    the mean logit over those teachers, then ``softmax(./T)`` over the classes some
    teacher has seen. Classes no teacher has seen get 0.
    """
    import torch

    from fclkit_builtins.one_by_one.distillation import soft_targets

    n = len(teachers[0][0])
    total = torch.zeros(n, num_classes, dtype=torch.float32)
    count = torch.zeros(num_classes, dtype=torch.float32)
    for logits, classes in teachers:
        cols = torch.as_tensor(sorted(classes), dtype=torch.long)
        if not len(cols):
            continue
        if mode == "probabilities":
            part = soft_targets(logits.float(), temperature, cols)
        else:
            part = logits.float().index_select(1, cols)
        total[:, cols] += part
        count[cols] += 1
    seen = count > 0
    if mode == "probabilities":
        mean = total / count.clamp(min=1)
        return mean / mean.sum(dim=1, keepdim=True).clamp(min=1e-12)
    mean = torch.full_like(total, float("-inf"))
    mean[:, seen] = total[:, seen] / count[seen]
    return torch.softmax(mean / float(temperature), dim=1)


def _outputs(forward: Any, x: Any, device: str) -> Any:
    import torch

    with torch.no_grad():
        return torch.cat([forward(x[i:i + EVAL_BATCH].to(device)).float().cpu()
                          for i in range(0, len(x), EVAL_BATCH)])


class FedDF(KnowledgeFusion):
    name = "feddf"
    description = ("FedDF (Lin et al. 2020): every upload's outputs on the public set "
                   "averaged and distilled into each architecture's FedAvg and the FM part")
    fuses_heterogeneous_models = True

    @attrs.frozen
    class Options:
        epochs: int = setting(
            5, "distillation epochs over the public set per round, for each architecture's "
            "small model and for the FM part (the paper stops early on held-out labelled "
            "data, which our server does not have; longer overfits a small public set)",
            int_at_least(1))
        batch_size: int = setting(64, "mini-batch size of server distillation",
                                  int_at_least(1))
        lr: float = setting(1e-3, "Adam learning rate of server distillation (the paper's)",
                            positive_float)
        temperature: float = setting(
            1.0, "softmax temperature of the ensemble and of the KL (1: the paper's plain "
            "softmax)", positive_float)
        ensemble: str = setting(
            "probabilities", "how the teachers are combined, per class over the teachers "
            "that have seen it: 'probabilities' (mean of their softmax outputs, "
            "renormalised) or 'logits' (mean of their logits, then softmax; the paper's "
            "Algorithm 1 averages logits)", one_of("probabilities", "logits"))
        distil_fm: bool = setting(
            True, "when the run has a foundation model, also distil the ensemble into the "
            "FM part the server keeps (sent to every client)")

    def setup(self, context: Any) -> None:
        super().setup(context)
        if context.public is None or len(context.public.x) == 0:
            raise fclkit.ConfigError(
                "public_fraction", 0.0, "feddf distils on the server's public set, and this "
                "benchmark gives it none", hint="set public_fraction > 0 (e.g. 0.1)")
        fm = context.foundation_model
        self.fm_state: dict[str, Any] | None = (
            fm.trainable_state() if fm is not None and self.options.distil_fm else None)
        self.fm_classes: list[int] = []

    # ----------------------------------------------------------------- fuse

    def fuse(self, round_info: RoundInfo, uploads: Sequence[Upload],
             failures: Sequence[Failure]) -> FusionResult:
        if not uploads:
            return FusionResult(downloads={})
        ctx, opts = self.context, self.options
        x_pub = ctx.public.x
        teachers = []
        for u in uploads:
            model = self._model(u.architecture, u.small_state)
            model.eval()
            teachers.append((_outputs(model, x_pub, ctx.device), u.classes_seen))
        targets = ensemble_targets(teachers, ctx.num_classes, opts.temperature, opts.ensemble)
        seen = sorted(set().union(*(u.classes_seen for u in uploads)))

        small: dict[str, dict[str, Any]] = {}
        for arch in sorted({u.architecture for u in uploads}):
            mine = [u for u in uploads if u.architecture == arch]
            start = weighted_average([u.small_state for u in mine],
                                     [u.num_examples for u in mine])
            model = self._model(arch, start)
            model.train()
            self._distil(model, list(model.parameters()), x_pub, targets,
                         ("small", arch, round_info.task, round_info.round))
            small[arch] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

        fm = ctx.foundation_model
        if fm is not None and self.fm_state is not None:
            fm.load_trainable_state(self.fm_state)
            z_pub = fm.precompute(x_pub)  # the frozen part runs once per round
            self._distil(fm.forward_precomputed, fm.trainable_parameters(), z_pub, targets,
                         ("fm", round_info.task, round_info.round))
            self.fm_state = fm.trainable_state()
            self.fm_classes = sorted(set(self.fm_classes) | set(seen))
        downloads = {}
        for cid in ctx.client_ids:
            arch = ctx.architectures.get(cid)
            state = small.get(arch) if arch is not None else None
            if self.fm_state is not None:
                downloads[cid] = Download(small_state=state, fm_state=self.fm_state,
                                          fm_classes=tuple(self.fm_classes))
            elif state is not None:
                downloads[cid] = Download(small_state=state)
        fm_global = self.fm_state if self.fm_state is not None else None
        return FusionResult(
            downloads=downloads, global_fm_state=fm_global,
            global_fm_classes=tuple(self.fm_classes) if fm_global is not None else None,
            metadata={"teachers": [u.client_id for u in uploads],
                      "architectures": sorted(small)})

    def _model(self, arch: str, state: dict[str, Any]) -> Any:
        model = self.context.build_small_model(arch).to(self.context.device)
        model.load_state_dict(state)
        return model

    def _distil(self, forward: Any, params: list, inputs: Any, targets: Any,
                seed_parts: tuple) -> None:
        """``epochs`` of Adam on ``KL(targets || softmax(forward(inputs)/T)) * T^2``."""
        import torch

        from fclkit.runtime.seeding import derive_seed
        from fclkit_builtins.one_by_one.distillation import kd_loss_to_targets

        opts = self.options
        optimizer = torch.optim.Adam(params, lr=opts.lr)
        gen = torch.Generator().manual_seed(derive_seed(self.context.seed, "feddf",
                                                        *seed_parts))
        n = len(targets)
        for _ in range(opts.epochs):
            order = torch.randperm(n, generator=gen)
            for i in range(0, n, opts.batch_size):
                idx = order[i:i + opts.batch_size]
                if len(idx) == 1 and n > 1:  # a lone example breaks batch norm
                    continue
                logits = forward(inputs[idx].to(self.context.device))
                loss = kd_loss_to_targets(logits, targets[idx].to(logits.device),
                                          opts.temperature)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()

    # ---------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        if self.fm_state is None:
            return {}
        return {"fm_state": self.fm_state, "fm_classes": list(self.fm_classes)}

    def load_state_dict(self, state: Any) -> None:
        if state:
            self.fm_state = state["fm_state"]
            self.fm_classes = list(state["fm_classes"])
