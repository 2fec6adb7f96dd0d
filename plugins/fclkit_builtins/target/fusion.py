"""Fusion ``target``: TARGET (Zhang, Chen, Zhuang, Lyu, "TARGET: Federated Class-Continual
Learning via Exemplar-Free Distillation", ICCV 2023, arXiv 2303.06937).

Server: FedAvg (the ``fedavg`` fusion, with its options) every round. At the last round of
every task it also trains a generator by inverting the new global model (cross-entropy
towards sampled labels of the classes seen so far, batch-norm statistics matching where
the model has batch norm, and an adversarial term against a server-side student; see
:mod:`.synthesis`), and sends the synthetic set of those old classes -- the inputs and the
global model's logits on them -- with that round's download (``Download.payload``).

Client (:class:`TargetClient`): keeps the latest synthetic set it received (handed over by
``ClientSide.receive``); in every round of the following task it adds to each mini-batch of
its ``--cl`` strategy

    kd_weight * KL(softmax(t / T) || softmax(s / T))

over every output (``kd_classes = "all"``) or the old classes' (``"old"``), ``t`` being the
previous global model's logits on a batch of synthetic inputs and ``s`` the small model's.
Before the end of the first task there is no synthetic set and no term. ``new_classes_ce``
adds the term that turns the strategy's cross-entropy into the authors' cross-entropy over
the task's classes. docs/methods/target.md says where this follows the paper and where not.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

import fclkit
from fclkit.config import (
    boolean,
    float_in,
    int_at_least,
    non_negative,
    one_of,
    positive_float,
    setting,
)
from fclkit.interfaces import ClientRound, ClientSide, ExtraLoss
from fclkit.messages import Download, Failure, FusionResult, RoundInfo, Upload
from fclkit_builtins.fusion.fedavg import FedAvg

#: names of the synthetic set's tensors in ``Download.payload`` and in the client's state
X, LOGITS, CLASSES = "target_x", "target_logits", "target_classes"


def _shift(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < -1:
        raise fclkit.ConfigError(attribute.name, value,
                                 "must be -1 (one eighth of the image height) or a number of "
                                 "pixels >= 0")


def _to_new_classes_ce(logits: Any, y: Any, new: Any) -> Any:
    """What turns a cross-entropy over every class into one over the task's classes
    ``new``: ``logsumexp(logits[:, new]) - logsumexp(logits)`` for the examples of those
    classes (0 for the others, e.g. replayed ones), batch mean. Added to a strategy's
    ``CE(logits, y)`` it gives the authors' ``CE(logits[:, new], y)``: the old classes'
    outputs are no longer pushed down on the new data."""
    import torch

    mine = torch.isin(y.to(logits.device), new).float()
    gap = torch.logsumexp(logits.index_select(1, new), dim=1) - torch.logsumexp(logits, dim=1)
    return (gap * mine).mean()


class TargetClient(ClientSide):
    """TARGET's client half: distillation from the previous global model on the server's
    synthetic set of the old classes."""

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self.x: Any = None
        self.logits: Any = None
        self.classes: Any = None

    def receive(self, download: Download) -> None:
        payload = getattr(download, "payload", None) or {}
        if X in payload:
            self.x, self.logits, self.classes = payload[X], payload[LOGITS], payload[CLASSES]

    def extra_losses(self, round: ClientRound) -> Sequence[ExtraLoss]:
        opts = self.options
        terms: list[ExtraLoss] = []
        if opts.new_classes_ce:
            import torch

            new = torch.as_tensor(sorted(round.task.classes), dtype=torch.long)

            def new_classes_only(x_real: Any, y: Any, logits: Any) -> Any:
                return _to_new_classes_ce(logits, y, new.to(logits.device))

            terms.append(new_classes_only)
        if self.x is not None and opts.kd_weight > 0 and len(self.x) > 0:
            terms.append(self._distillation(round))
        return terms

    def _distillation(self, round: ClientRound) -> ExtraLoss:
        """The term ``kd_weight * KL(softmax(t/T) || softmax(s/T))`` on the next batch of
        synthetic inputs (a fresh permutation of the set whenever it runs out)."""
        import torch
        import torch.nn.functional as F

        from fclkit.runtime.seeding import derive_seed

        opts = self.options
        model, device = round.small_model, round.context.device
        x, teacher = self.x, self.logits
        if opts.kd_classes == "old":
            cols, teacher = self.classes.to(torch.long), teacher.index_select(1, self.classes)
        else:
            cols = None
        n = len(x)
        size = int(opts.synthetic_batch_size)
        if size == 0:  # the authors': the synthetic set once per local epoch
            steps = max(1, math.ceil(round.task.num_train / round.context.batch_size))
            size = math.ceil(n / steps)
        size = min(size, n)
        tau, weight = float(opts.kd_temperature), float(opts.kd_weight)
        gen = torch.Generator().manual_seed(derive_seed(
            round.context.seed, "target-kd", round.client_id, round.round_info.task,
            round.round_info.round))
        cursor = {"order": torch.randperm(n, generator=gen), "pos": 0}

        def target_kd(x_real: Any, y: Any, logits: Any) -> Any:
            if cursor["pos"] + size > n:
                cursor["order"], cursor["pos"] = torch.randperm(n, generator=gen), 0
            idx = cursor["order"][cursor["pos"]:cursor["pos"] + size]
            cursor["pos"] += size
            student = model(x[idx].to(device))
            if cols is not None:
                student = student.index_select(1, cols.to(device))
            target = F.softmax(teacher[idx].to(device) / tau, dim=1)
            kl = F.kl_div(F.log_softmax(student / tau, dim=1), target, reduction="batchmean")
            return weight * kl

        return target_kd

    def state_dict(self) -> dict[str, Any]:
        if self.x is None:
            return {}
        return {X: self.x, LOGITS: self.logits, CLASSES: self.classes}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state and X in state:
            self.x, self.logits, self.classes = state[X], state[LOGITS], state[CLASSES]
        else:
            self.x = self.logits = self.classes = None


class Target(FedAvg):
    name = "target"
    description = ("TARGET (Zhang et al. ICCV 2023): FedAvg + a generator inverted from the "
                   "global model at each task's end; clients distil the old model on its "
                   "synthetic data (homogeneous architectures)")
    ClientSide = TargetClient

    @attrs.frozen
    class Options(FedAvg.Options):
        # -- clients
        kd_weight: float = setting(
            5.0, "clients: weight of the distillation from the previous global model on "
            "the synthetic set (the authors' 25 at their local lr 0.01, scaled to the "
            "default lr 0.05 so that lr x weight stays 0.25; 0 turns TARGET into FedAvg)",
            float_in(0.0, 1e6))
        kd_classes: str = setting(
            "all", "clients: the outputs the distillation matches: 'all' (every output of "
            "the previous global model, which keeps the old classes above the new ones on "
            "synthetic inputs against a strategy's cross-entropy over every class) or "
            "'old' (the old classes only, renormalised, as the authors' model whose "
            "cross-entropy covers the new classes only: see new_classes_ce)",
            one_of("all", "old"))
        new_classes_ce: bool = setting(
            False, "clients: add, in every task, what turns the strategy's cross-entropy "
            "over every class into the authors' cross-entropy over the task's classes only "
            "(on the task's examples; replayed ones keep theirs), so the new data stops "
            "pushing the old classes' outputs down; assumes the strategy's loss is a "
            "cross-entropy over every output, as every built-in's is", boolean)
        kd_temperature: float = setting(
            2.0, "clients: softmax temperature of that distillation (the authors' 2)",
            positive_float)
        synthetic_batch_size: int = setting(
            0, "clients: synthetic examples per training mini-batch; 0: the authors' rule, "
            "as many as make one local epoch go over the synthetic set once",
            int_at_least(0))
        # -- server: generator
        synthesis_rounds: int = setting(
            10, "server: synthesis rounds at each task's end; each adds a batch of "
            "synthetic inputs (the authors' 10 on CIFAR-100)", int_at_least(1))
        generator_steps: int = setting(
            10, "server: optimisation steps of the generator and latent codes per round "
            "(the authors' 10 on CIFAR-100)", int_at_least(1))
        synthesis_batch_size: int = setting(
            128, "server: synthetic inputs per round, so the set holds "
            "synthesis_rounds x this many (the authors' 256, halved: see docs)",
            int_at_least(2))
        latent_dim: int = setting(256, "server: size of the generator's latent code "
                                  "(the authors' 256)", int_at_least(1))
        generator_width: int = setting(
            16, "server: channels of the generator's last conv block, doubled in the first "
            "(the authors' 64; 16 keeps 8x8 digits cheap on a CPU)", int_at_least(1))
        generator_lr: float = setting(
            0.002, "server: Adam learning rate of the fast generator (the meta-generator "
            "steps at this x generator_steps; the authors' 0.002)", positive_float)
        latent_lr: float = setting(0.01, "server: Adam learning rate of the latent codes "
                                   "(the authors' 0.01)", positive_float)
        ce_weight: float = setting(
            0.5, "server: weight of the global model's cross-entropy towards the sampled "
            "labels (the authors' 0.5)", non_negative)
        bn_weight: float = setting(
            10.0, "server: weight of matching the batch-norm statistics of the global "
            "model (the authors' 10); models without batch norm (mlp, group norm) have "
            "no such term", non_negative)
        bn_momentum: float = setting(
            0.9, "server: momentum mixing earlier rounds' batch statistics into that "
            "match (the authors' 0.9; 0: off)", float_in(0.0, 1.0, high_open=True))
        adv_weight: float = setting(
            1.0, "server: weight of the adversarial term, minus the teacher-student KL on "
            "the inputs they agree on (the authors' 1; 0: off)", non_negative)
        warmup: int = setting(
            5, "server: synthesis rounds before the student is trained and the adversarial "
            "term is on (the authors' 20, which with their 10 CIFAR-100 rounds never "
            "switches it on; see docs)", int_at_least(0))
        shift: int = setting(
            -1, "server: random translation (pixels) of the synthetic images before the "
            "global model sees them, the authors' RandomCrop(padding=4) on 32 px; "
            "-1: one eighth of the height (1 px on 8x8 digits)", _shift)
        flip: bool = setting(
            False, "server: also mirror the synthetic images at random (the authors do, "
            "on natural images; off: digits are not mirror-symmetric)", boolean)
        # -- server: student
        student_steps: int = setting(
            100, "server: distillation steps of the student on the synthetic set after "
            "each round past the warm-up (the authors' 400)", int_at_least(0))
        student_batch_size: int = setting(
            256, "server: mini-batch size of the student's distillation (the authors' 256)",
            int_at_least(2))
        student_lr: float = setting(0.2, "server: SGD learning rate of the student "
                                    "(the authors' 0.2, cosine-annealed)", positive_float)
        student_temperature: float = setting(
            20.0, "server: softmax temperature of the student's distillation (the "
            "authors' 20)", positive_float)
        synthesize_last_task: bool = setting(
            False, "server: also synthesise after the run's last task (nothing follows it "
            "to use the set; on: for inspection)", boolean)

    def setup(self, context: Any) -> None:
        super().setup(context)
        spec = getattr(context, "input_spec", None)
        if spec is not None:
            shape, modality = tuple(spec.shape), spec.modality
        elif context.public is not None and len(context.public.x):
            shape, modality = tuple(context.public.x.shape[1:]), "image"
        else:
            raise fclkit.ConfigError("fusion", "target", "the server is not told what the "
                                     "clients' inputs look like", hint="run it through "
                                     "fclkit.run (FusionContext.input_spec)")
        if modality != "image" or len(shape) != 3:
            raise fclkit.IncompatibleComponentsError(
                f"fusion 'target' synthesises images (C, H, W) with a generator, and this "
                f"benchmark gives {modality} inputs of shape {shape}",
                hint="use an image benchmark (digits, mnist, split-fmnist, imagefolder)")
        self.input_shape = shape
        #: what the last synthesis gave (for inspection; not part of the state)
        self.last_synthesis: Any = None

    def fuse(self, round_info: RoundInfo, uploads: Sequence[Upload],
             failures: Sequence[Failure]) -> FusionResult:
        result = super().fuse(round_info, uploads, failures)
        if not uploads or not round_info.is_last_round:
            return result
        num_tasks = getattr(self.context, "num_tasks", None)
        if (num_tasks is not None and round_info.task == num_tasks - 1
                and not self.options.synthesize_last_task):
            return result
        average = next(iter(result.downloads.values())).small_state
        classes = sorted(set().union(*(u.classes_seen for u in uploads)))
        synthetic = self.synthesize(uploads[0].architecture, average, classes,
                                    round_info.task)
        import torch

        payload = {X: synthetic.x, LOGITS: synthetic.teacher_logits,
                   CLASSES: torch.tensor(synthetic.classes, dtype=torch.long)}
        downloads = {cid: attrs.evolve(d, payload=payload) for cid, d in result.downloads.items()}
        metadata = dict(result.metadata)
        metadata["target_synthetic"] = len(synthetic.x)
        return attrs.evolve(result, downloads=downloads, metadata=metadata)

    def synthesize(self, architecture: str, state: Mapping[str, Any], classes: Sequence[int],
                   task: int) -> Any:
        """The synthetic set of ``classes`` inverted from the model ``state`` of
        ``architecture`` (the global model at the end of ``task``)."""
        from fclkit.runtime.seeding import derive_seed

        from .synthesis import SynthesisSettings, synthesize

        o, ctx = self.options, self.context
        teacher = ctx.build_small_model(architecture)
        teacher.load_state_dict(state)
        shift = o.shift if o.shift >= 0 else max(1, self.input_shape[1] // 8)
        settings = SynthesisSettings(
            rounds=o.synthesis_rounds, steps=o.generator_steps,
            batch_size=o.synthesis_batch_size, latent_dim=o.latent_dim,
            generator_width=o.generator_width, generator_lr=o.generator_lr,
            latent_lr=o.latent_lr, ce_weight=o.ce_weight, bn_weight=o.bn_weight,
            adv_weight=o.adv_weight, bn_momentum=o.bn_momentum, warmup=o.warmup,
            shift=shift, flip=o.flip, student_steps=o.student_steps,
            student_batch_size=o.student_batch_size, student_lr=o.student_lr,
            student_temperature=o.student_temperature)
        self.last_synthesis = synthesize(
            teacher, classes, self.input_shape, settings,
            seed=derive_seed(ctx.seed, "target-synthesis", task), device=ctx.device,
            build_student=lambda: ctx.build_small_model(architecture))
        return self.last_synthesis
