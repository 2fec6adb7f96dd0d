"""Built-in fusion ``one-by-one``: One-by-One Distillation (OBOD), our reading of the paper.

For every client k the server keeps a personalised copy theta_k of the
foundation model's trainable part. After each round it distils the uploaded
small models into theta_k **one teacher at a time** on the public set:

    for teacher u in order(k):                      # default: others first, k's own last
        theta_prev = theta_k
        minimise  KD(FM_theta(x), S_u(x); classes seen by u)
                + anchor_weight * anchor(theta, theta_prev)  # keep earlier teachers/tasks
        over x in the public set, for `epochs` epochs

The anchor is either knowledge distillation from theta_prev on the classes the
teacher has *not* seen (``kd``), an L2 pull towards theta_prev (``l2``), or
nothing. A global theta_g is distilled the same way from every teacher once
(in client-id order); it is evaluated on every client and is what a new client
would start from. Small models are never averaged, so clients may use different
architectures. The method's client side -- the FM's guidance of the small
models -- is :class:`~fclkit_builtins.one_by_one.guidance.FMGuidance`. See docs/method.md.

With ``batched = true`` (default) and an FM whose trainable part is a plain head over
frozen-backbone features, the K personalised parts and the global one are distilled
together, each from its own teacher at every step (:mod:`.batched`); the results are
those of one part at a time (:meth:`OneByOneDistillation._distil`) to float rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

import fclkit
from fclkit.config import (
    float_in,
    int_at_least,
    non_negative,
    one_of,
    positive_float,
    setting,
)
from fclkit.interfaces import KnowledgeFusion
from fclkit.messages import Download, Failure, FusionResult, RoundInfo, Upload

from .batched import Lane, StackedHead, distil_lanes
from .guidance import FMGuidance


class OneByOneDistillation(KnowledgeFusion):
    name = "one-by-one"
    description = ("One-by-One Distillation: small models distilled one at a time into a "
                   "personalised foundation model per client (heterogeneous models welcome)")
    requires_foundation_model = True
    fuses_heterogeneous_models = True
    ClientSide = FMGuidance

    @attrs.frozen
    class Options:
        order: str = setting(
            "others-first", "teacher order for client k: 'others-first' (k's own model "
            "last), 'own-first', 'by-id' or 'random'",
            one_of("others-first", "own-first", "by-id", "random"))
        epochs: int = setting(5, "distillation epochs over the public set, per teacher "
                              "(few: each teacher moves the FM part, none overwrites it)",
                              int_at_least(1))
        batch_size: int = setting(64, "mini-batch size of server distillation",
                                  int_at_least(1))
        lr: float = setting(1e-3, "Adam learning rate of server distillation", positive_float)
        temperature: float = setting(2.0, "softmax temperature of distillation",
                                     positive_float)
        anchor: str = setting(
            "kd", "what keeps earlier teachers' and tasks' knowledge: 'kd' (distil the "
            "previous FM part on the classes the teacher has not seen), 'kd-all' (on every "
            "class it knows, so each teacher is blended with the ones before it), 'l2' "
            "(pull towards it) or 'none'", one_of("kd", "kd-all", "l2", "none"))
        anchor_weight: float = setting(1.0, "weight of the anchor term", non_negative)
        teacher_classes: str = setting(
            "auto", "classes each teacher is distilled on: 'seen' (every class it has "
            "seen), 'task' (its current task's classes only; the anchor keeps the older "
            "ones, as in a separated softmax), 'recalled' (its current task's classes and "
            "the older ones it still recognises on the server's labelled public examples, "
            "see recall_threshold; needs public_labels) or 'auto' ('recalled' when the "
            "server holds labels, else 'seen')", one_of("auto", "seen", "task", "recalled"))
        recall_threshold: float = setting(
            0.2, "teacher_classes = 'recalled': an older class is distilled from a teacher "
            "when the teacher classifies at least this share of the class's labelled public "
            "examples correctly", float_in(0.0, 1.0))
        min_confidence: float = setting(
            0.0, "distil a teacher only on public examples where its top probability "
            "(over the classes it has seen) is at least this (0: on every example)",
            float_in(0.0, 1.0))
        personalise: bool = setting(
            True, "True: one FM part per client; False: every client gets the global one")
        label_weight: float = setting(
            1.0, "weight of a cross-entropy term on the server's labelled public examples "
            "(config public_labels) of the classes known so far, added at every teacher's "
            "step; no effect when the server holds no labels", non_negative)
        teacher_trust: str = setting(
            "none", "how much each teacher is believed on a public example: 'none' "
            "(fully) or 'labels' (the precision of the class it predicts there, measured "
            "on the server's labelled public examples, Laplace-smoothed; needs "
            "public_labels)", one_of("none", "labels"))
        distil_labelled: bool = setting(
            False, "also distil the teachers on the public examples whose label the server "
            "holds (False: where the label is known, it alone teaches)")
        batched: bool = setting(
            True, "distil all FM parts of a round together, as one batched computation "
            "(same results as one at a time, to float rounding; several times faster with "
            "many clients); used when the FM's trainable part is a plain head over frozen "
            "backbone features (not with LoRA adapters); false: one part at a time")
        calibration: str = setting(
            "none", "our addition (not the paper's): 'gaussian' has every client upload "
            "per-class count, mean and variance of the backbone features of its private "
            "examples, and the server retrains each distilled FM part on features drawn "
            "from those Gaussians (CCVR, Luo et al. 2021); 'none': the paper's method",
            one_of("none", "gaussian"))
        calibration_samples: int = setting(
            200, "calibration: virtual features drawn per class and round", int_at_least(1))
        calibration_epochs: int = setting(
            5, "calibration: epochs over the virtual features", int_at_least(1))
        calibration_lr: float = setting(
            5e-3, "calibration: Adam learning rate", positive_float)
        public_views: int = setting(
            0, "our addition (not the paper's): augmented copies of every public example "
            "added to the transfer set, made once (images: a random rotation and shift; "
            "texts: a random crop); unlabelled (docs/method.md)", int_at_least(0))
        public_mixes: int = setting(
            0, "our addition: mixed examples per public example added to the transfer set, "
            "made once (images: mixup of two public examples; texts: the start of one "
            "spliced to the end of another); unlabelled", int_at_least(0))
        # the client side: Small Model Continual Fine-tuning (FMGuidance)
        guidance_weight: float = setting(
            1.0, "clients: weight of the foundation model's distillation term in the small "
            "models' loss (Small Model Continual Fine-tuning); 0 turns the guidance off",
            float_in(0.0, 1e6))
        guidance_temperature: float = setting(
            2.0, "clients: softmax temperature of the foundation model's guidance",
            positive_float)
        guidance_examples: str = setting(
            "fm-better", "clients: where the foundation model guides a small model, judged "
            "by the example's own label: 'all' (every training example), 'fm-correct' (where "
            "the FM predicts the label) or 'fm-better' (where the FM gives the label more "
            "probability than the small model does); examples of classes the FM does not "
            "know yet are guided in every mode (see guidance_unknown_classes)",
            one_of("all", "fm-correct", "fm-better"))
        guidance_unknown_classes: bool = setting(
            True, "clients: also guide the examples of classes the FM does not know yet "
            "(toward its distribution over the classes it knows); false: only examples of "
            "classes it knows are guided")

    def setup(self, context: Any) -> None:
        if context.public is None or len(context.public.x) == 0:
            raise fclkit.ConfigError(
                "public_fraction", 0.0, "one-by-one distils on the server's public set, and "
                "this benchmark has none", hint="set public_fraction > 0 (e.g. 0.1)")
        o = self.options
        if o.public_views or o.public_mixes:  # the transfer set: public set + views + mixes
            from fclkit.runtime.seeding import derive_seed

            from .transfer import expand_public

            modality = context.input_spec.modality if context.input_spec else "image"
            if modality not in ("image", "text"):
                raise fclkit.ConfigError(
                    "fusion_options.public_views", o.public_views, "augmented views and "
                    f"mixes are made of images or texts, and this benchmark gives {modality}",
                    hint="set public_views = 0 and public_mixes = 0")
            context = attrs.evolve(context, public=expand_public(
                context.public, modality, o.public_views, o.public_mixes,
                derive_seed(context.seed, "transfer-set")))
        super().setup(context)
        #: indices (into the public set) of the examples the server has labels for
        self.labelled_index = context.public.labelled_index
        if self.options.teacher_classes == "recalled" and not len(self.labelled_index):
            raise fclkit.ConfigError(
                "fusion_options.teacher_classes", "recalled", "measures which older classes "
                "a teacher still recognises on the server's labelled public examples, and "
                "the server holds no labels", hint="set public_labels (e.g. --public-labels "
                "5), or teacher_classes = 'seen' or 'task'")
        fm = context.foundation_model
        initial = fm.trainable_state()
        if self.options.calibration != "none" and (
                not hasattr(fm, "precompute") or any(not k.startswith("head.")
                                                     for k in initial)):
            raise fclkit.ConfigError(
                "fusion_options.calibration", self.options.calibration, "calibration draws "
                "virtual backbone features for the FM's head, and this FM's trainable part "
                "is more than a head over frozen features (e.g. LoRA adapters)",
                hint="set calibration = 'none', or use the FM without adapters")
        self.personal: dict[int, dict[str, Any]] = {k: initial for k in context.client_ids}
        self.personal_classes: dict[int, list[int]] = {k: [] for k in context.client_ids}
        self.global_state: dict[str, Any] = initial
        self.global_classes: list[int] = []
        #: calibration: class -> client id -> (count, feature mean, feature variance)
        self.feature_stats: dict[int, dict[int, tuple[float, Any, Any]]] = {}

    # ----------------------------------------------------------------- fuse

    def fuse(self, round_info: RoundInfo, uploads: Sequence[Upload],
             failures: Sequence[Failure]) -> FusionResult:
        if not uploads:
            return FusionResult(downloads={})
        x_pub = self.context.public.x
        teachers = {}
        for u in uploads:
            logits = self._teacher_logits(u, x_pub)
            teachers[u.client_id] = (logits, self._classes_of(u, logits))
        ids = sorted(teachers)
        lanes = [Lane(self.global_state, self.global_classes, ids,
                      ("global", round_info.task, round_info.round))]
        if self.options.personalise:
            lanes += [Lane(self.personal[k], self.personal_classes[k],
                           self._order(k, ids, round_info), (k, round_info.task, round_info.round))
                      for k in self.context.client_ids]
        fused = self._distil_lanes(lanes, teachers)
        if self.options.calibration == "gaussian":
            self._collect_feature_stats(uploads)
            fused = [self._calibrate(state, classes, lane.seed_parts)
                     for (state, classes), lane in zip(fused, lanes, strict=True)]
        self.global_state, self.global_classes = fused[0]
        downloads = {}
        for i, k in enumerate(self.context.client_ids):
            if self.options.personalise:
                self.personal[k], self.personal_classes[k] = fused[1 + i]
                state, classes = self.personal[k], self.personal_classes[k]
            else:
                state, classes = self.global_state, self.global_classes
            downloads[k] = Download(fm_state=state, fm_classes=tuple(classes))
        return FusionResult(downloads=downloads, global_fm_state=self.global_state,
                            global_fm_classes=tuple(self.global_classes),
                            metadata={"teachers": ids})

    def _classes_of(self, upload: Upload, logits: Any) -> list[int]:
        """The classes a teacher is distilled on (``teacher_classes``)."""
        mode = self.options.teacher_classes
        if mode == "auto":
            mode = "recalled" if len(self.labelled_index) else "seen"
        seen = sorted(upload.classes_seen)
        if mode == "seen" or "task_classes" not in upload.metadata:
            return seen
        task = sorted(int(c) for c in upload.metadata["task_classes"])
        if mode == "task":
            return task
        # 'recalled': older classes whose labelled public examples the teacher still
        # classifies correctly (argmax over the classes it has seen) often enough
        import torch

        rows, target = self.context.public.labelled_among(seen)  # target: column in seen
        predicted = logits[rows].index_select(1, torch.tensor(seen)).argmax(dim=1)
        labelled = torch.bincount(target, minlength=len(seen))
        right = torch.bincount(target[predicted == target], minlength=len(seen))
        recall = right / labelled.clamp(min=1)  # a class without labels counts 0
        return sorted(set(task) | {c for i, c in enumerate(seen)
                                   if recall[i] >= self.options.recall_threshold})

    def _order(self, k: int, ids: list[int], round_info: RoundInfo) -> list[int]:
        mode = self.options.order
        others = [u for u in ids if u != k]
        own = [k] if k in ids else []
        if mode == "others-first":
            return others + own
        if mode == "own-first":
            return own + others
        if mode == "by-id":
            return list(ids)
        import random

        from fclkit.runtime.seeding import derive_seed

        rng = random.Random(derive_seed(self.context.seed, "order", k, round_info.task,
                                        round_info.round))
        shuffled = list(ids)
        rng.shuffle(shuffled)
        return shuffled

    def _teacher_logits(self, upload: Upload, x: Any) -> Any:
        import torch

        model = self.context.build_small_model(upload.architecture)
        model.load_state_dict(upload.small_state)
        model.eval()
        with torch.no_grad():
            return torch.cat([model(x[i:i + 512].to(self.context.device)).cpu()
                              for i in range(0, len(x), 512)])

    def _distil_lanes(self, lanes: list[Lane],
                      teachers: dict[int, tuple[Any, list[int]]]) -> list[tuple[dict, list]]:
        """Distil every lane (the global part first, then the clients'): all at once when
        ``batched`` and the FM's trainable part allows it, else one after the other."""
        fm = self.context.foundation_model
        head = self._stacked_head() if self.options.batched else None
        if head is None:
            return [self._distil(lane.state, lane.known, [teachers[u] for u in lane.teachers],
                                 seed_parts=lane.seed_parts) for lane in lanes]
        z_pub = fm.precompute(self.context.public.x)
        fused = distil_lanes(self, head, z_pub, lanes, teachers)
        fm.load_trainable_state(fused[-1][0])  # as the sequential path leaves the FM
        return fused

    def _stacked_head(self) -> StackedHead | None:
        """The FM's head in stacked form when the trainable part is that head alone, over
        features :meth:`~fclkit.foundation.FrozenBackboneFoundationModel.precompute`
        gives (no adapters, ``forward_precomputed`` not overridden); else None."""
        from fclkit.foundation import FrozenBackboneFoundationModel

        fm = self.context.foundation_model
        if not isinstance(fm, FrozenBackboneFoundationModel) or (
                type(fm).forward_precomputed is not
                FrozenBackboneFoundationModel.forward_precomputed):
            return None
        if getattr(fm, "device", None) is None or fm.device.type not in ("cpu", "cuda"):
            return None  # torch's fused Adam kernel: CPU and CUDA
        head = StackedHead.of(fm.head)
        if head is None or set(fm.trainable_state()) != {f"head.{n}" for n in head.names}:
            return None  # adapters (LoRA) train too: their backbone pass is not batched
        return head

    def _distil(self, state: dict[str, Any], known: list[int],
                teachers: list[tuple[Any, list[int]]], seed_parts: tuple) -> tuple[dict, list]:
        """Distil ``teachers`` into ``state`` one at a time; returns (state, classes)."""
        import torch

        from fclkit.runtime.seeding import derive_seed

        from .distillation import kd_loss_to_targets, soft_targets

        fm = self.context.foundation_model
        opt_cfg = self.options
        z_pub = fm.precompute(self.context.public.x)  # the frozen part runs once per call
        n = len(self.context.public.x)
        known = sorted(known)
        fm.load_trainable_state(state)
        params = fm.trainable_parameters()
        for step, (t_logits, t_classes) in enumerate(teachers):
            # the anchor's classes: those the teacher has not seen ('kd'), or every
            # class the FM knows ('kd-all': earlier teachers' view of shared classes too)
            keep = sorted(known if opt_cfg.anchor == "kd-all" else set(known) - set(t_classes))
            labels = self._label_term(sorted(set(known) | set(t_classes)))
            prev_targets = None
            prev_params = None
            if opt_cfg.anchor in ("kd", "kd-all") and keep and opt_cfg.anchor_weight > 0:
                with torch.no_grad():
                    prev_logits = torch.cat([fm.forward_precomputed(z_pub[i:i + 512]).cpu()
                                             for i in range(0, n, 512)])
                prev_targets = soft_targets(prev_logits, opt_cfg.temperature, keep)
                keep_cols = torch.tensor(keep, dtype=torch.long, device=self.context.device)
            elif opt_cfg.anchor == "l2" and known and opt_cfg.anchor_weight > 0:
                prev_params = [p.detach().clone() for p in params]
            optimizer = torch.optim.Adam(params, lr=opt_cfg.lr)
            gen = torch.Generator().manual_seed(derive_seed(self.context.seed, "obod",
                                                            *seed_parts, step))
            # fixed during this teacher's epochs: computed once, not at every step
            t_targets = soft_targets(t_logits, opt_cfg.temperature, t_classes)
            t_cols = torch.tensor(t_classes, dtype=torch.long, device=self.context.device)
            rows = torch.arange(n)  # where this teacher is distilled
            if (opt_cfg.label_weight > 0 and len(self.labelled_index)
                    and not opt_cfg.distil_labelled):
                rows = rows[~torch.isin(rows, self.labelled_index)]
            if opt_cfg.min_confidence > 0:
                cols = torch.tensor(t_classes, dtype=torch.long)
                conf = t_logits.index_select(1, cols).softmax(dim=1).max(dim=1).values
                rows = rows[conf[rows] >= opt_cfg.min_confidence]
            trust = self._trust(t_logits, t_classes)  # per public row, or None
            # batches go over the distillation rows; with none left (every public example
            # labelled), over the labelled ones, and only the labels teach
            batch_rows = rows if len(rows) or labels is None else labels[0]
            for _ in range(opt_cfg.epochs if len(batch_rows) else 0):
                order = batch_rows[torch.randperm(len(batch_rows), generator=gen)]
                for i in range(0, len(order), opt_cfg.batch_size):
                    idx = order[i:i + opt_cfg.batch_size]
                    student = fm.forward_precomputed(z_pub[idx])
                    loss = student.new_zeros(())
                    if len(rows):
                        loss = loss + kd_loss_to_targets(
                            student, t_targets[idx].to(student.device), opt_cfg.temperature,
                            t_cols, None if trust is None else trust[idx].to(student.device))
                    if prev_targets is not None:
                        loss = loss + opt_cfg.anchor_weight * kd_loss_to_targets(
                            student, prev_targets[idx].to(student.device),
                            opt_cfg.temperature, keep_cols)
                    elif prev_params is not None:
                        loss = loss + opt_cfg.anchor_weight * sum(
                            ((p - q) ** 2).sum() for p, q in zip(params, prev_params,
                                                                 strict=True))
                    if labels is not None:
                        loss = loss + opt_cfg.label_weight * self._label_loss(
                            fm, z_pub, labels, len(idx), gen)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
            known = sorted(set(known) | set(t_classes))
        return fm.trainable_state(), known

    # ---------------------------------------------------------- calibration

    def _collect_feature_stats(self, uploads: Sequence[Upload]) -> None:
        """Keep each client's latest feature statistics of every class it uploaded."""
        for u in uploads:
            p = u.payload
            if "feature_classes" not in p:
                continue
            for i, c in enumerate(p["feature_classes"].tolist()):
                self.feature_stats.setdefault(int(c), {})[u.client_id] = (
                    float(p["feature_count"][i]), p["feature_mean"][i], p["feature_var"][i])

    def _pooled(self, c: int) -> tuple[Any, Any]:
        """Mean and variance of class ``c``'s features over every client that has it."""
        import torch

        stats = list(self.feature_stats[c].values())
        n = torch.tensor([s[0] for s in stats])
        means, variances = torch.stack([s[1] for s in stats]), torch.stack([s[2] for s in stats])
        w = (n / n.sum()).unsqueeze(1)
        mean = (w * means).sum(0)
        var = (w * (variances + means ** 2)).sum(0) - mean ** 2
        return mean, var.clamp(min=0)

    def _calibrate(self, state: dict[str, Any], known: list[int],
                   seed_parts: tuple) -> tuple[dict, list]:
        """Retrain an FM part on virtual features: for every known class with statistics,
        ``calibration_samples`` draws from N(pooled mean, pooled variance), cross-entropy
        over the known classes (CCVR's classifier calibration)."""
        import torch

        from fclkit.runtime.seeding import derive_seed

        from .distillation import fit_on_features

        classes = [c for c in sorted(known) if c in self.feature_stats]
        if not classes:
            return state, known
        o, fm = self.options, self.context.foundation_model
        gen = torch.Generator().manual_seed(derive_seed(self.context.seed, "calibrate",
                                                        *seed_parts))
        z, y = [], []
        for c in classes:
            mean, var = self._pooled(c)
            noise = torch.randn(o.calibration_samples, len(mean), generator=gen)
            z.append(mean + noise * var.sqrt())
            y.append(torch.full((o.calibration_samples,), c, dtype=torch.long))
        z, y = torch.cat(z), torch.cat(y)
        cols = torch.tensor(sorted(known), dtype=torch.long)
        position = torch.full((int(cols.max()) + 1,), -1, dtype=torch.long)
        position[cols] = torch.arange(len(cols))
        fm.load_trainable_state(state)
        fit_on_features(fm, z, position[y], cols, epochs=o.calibration_epochs,
                        batch_size=o.batch_size, lr=o.calibration_lr, generator=gen)
        return fm.trainable_state(), known

    def _trust(self, t_logits: Any, t_classes: list[int]) -> Any:
        """``teacher_trust = labels``: per public row, the teacher's precision on the
        class it predicts there, (right + 1) / (predicted + 2) over the server's
        labelled examples of its classes; None when off or without labels."""
        import torch

        if self.options.teacher_trust == "none" or not len(self.labelled_index):
            return None
        rows, target = self.context.public.labelled_among(t_classes)
        cols = torch.tensor(t_classes, dtype=torch.long)
        predicted = t_logits.index_select(1, cols).argmax(dim=1)  # column, every row
        k = len(t_classes)
        said = torch.bincount(predicted[rows], minlength=k).float()
        right = torch.bincount(predicted[rows][predicted[rows] == target], minlength=k).float()
        precision = (right + 1.0) / (said + 2.0)
        return precision[predicted]

    @staticmethod
    def _label_loss(fm: Any, z_pub: Any, labels: tuple[Any, Any, Any], size: int,
                    gen: Any) -> Any:
        """Cross-entropy on ``size`` labelled public examples drawn at random."""
        import torch
        import torch.nn.functional as F

        rows, target, cols = labels
        pick = torch.randint(len(rows), (min(len(rows), size),), generator=gen)
        logits = fm.forward_precomputed(z_pub[rows[pick]]).index_select(1, cols)
        return F.cross_entropy(logits, target[pick].to(logits.device))

    def _label_term(self, classes: list[int]) -> tuple[Any, Any, Any] | None:
        """(public rows, their targets, columns) of the labelled public examples of
        ``classes``, for the cross-entropy term; None when there are none or it is off."""
        import torch

        if self.options.label_weight == 0 or len(self.labelled_index) == 0 or not classes:
            return None
        rows, target = self.context.public.labelled_among(classes)
        if not len(rows):
            return None
        cols = torch.tensor(classes, dtype=torch.long, device=self.context.device)
        return rows, target, cols

    # ---------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        return {"personal": {str(k): v for k, v in self.personal.items()},
                "personal_classes": {str(k): v for k, v in self.personal_classes.items()},
                "global_state": self.global_state, "global_classes": self.global_classes,
                "feature_stats": {str(c): {str(k): {"count": n, "mean": m, "var": v}
                                           for k, (n, m, v) in by_client.items()}
                                  for c, by_client in self.feature_stats.items()}}

    def load_state_dict(self, state: Any) -> None:
        if not state:
            return
        self.personal = {int(k): v for k, v in state["personal"].items()}
        self.personal_classes = {int(k): list(v) for k, v in state["personal_classes"].items()}
        self.global_state = state["global_state"]
        self.global_classes = list(state["global_classes"])
        self.feature_stats = {int(c): {int(k): (float(e["count"]), e["mean"], e["var"])
                                       for k, e in by_client.items()}
                              for c, by_client in state.get("feature_stats", {}).items()}
