"""TARGET's server-side data synthesis: a generator trained by model inversion of the global
model (imports torch; only the ``target`` fusion imports this module).

For ``rounds`` synthesis rounds, a fresh batch of latent codes ``z`` and of labels drawn
uniformly from the classes seen so far is sampled; a copy of the generator (the *fast*
generator) and ``z`` are optimised for ``steps`` Adam steps on

    ce_weight * CE(teacher(A(G(z))), y) + bn_weight * L_bn + adv_weight * L_adv

where ``A`` is a random translation (and optionally a horizontal flip), ``L_bn`` matches
the batch statistics at the input of every batch-norm layer of the teacher to its running
statistics (DeepInversion; with a momentum over rounds), and ``L_adv`` is the negative
KL divergence between teacher and a server-side student on the inputs they agree on (so
the generator seeks inputs the student has not yet learnt to imitate). The inputs of the
step with the lowest loss join the synthetic set; the generator itself is meta-trained
with first-order MAML (the fast copy's gradients of every step, summed). After ``warmup``
rounds the adversarial term is on and the student, a freshly built model of the same
architecture, is distilled from the teacher on the synthetic set after every round.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import nn


class ImageGenerator(nn.Module):
    """The authors' generator (DCGAN-like: a linear layer to a quarter-size feature map,
    two upsampling conv blocks with batch norm, a sigmoid output in [0, 1]) for images of
    any shape ``(C, H, W)``: the map is ``ceil(H/4) x ceil(W/4)`` and the output is cut to
    ``H x W``."""

    def __init__(self, latent_dim: int, width: int, shape: Sequence[int]) -> None:
        super().__init__()
        channels, height, wide = (int(s) for s in shape)
        self.shape = (channels, height, wide)
        self.latent_dim = int(latent_dim)
        self.h0, self.w0 = math.ceil(height / 4), math.ceil(wide / 4)
        self.project = nn.Linear(latent_dim, 2 * width * self.h0 * self.w0)
        self.blocks = nn.Sequential(
            nn.BatchNorm2d(2 * width),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, channels, 3, padding=1),
            nn.Sigmoid())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.project(z).view(len(z), -1, self.h0, self.w0)
        _, height, wide = self.shape
        return self.blocks(out)[:, :, :height, :wide]


class BatchNormStatistics:
    """DeepInversion's feature-statistics loss at one batch-norm layer of the teacher:
    ``||running_var - var||_2 + ||running_mean - mean||_2`` of the layer's input batch,
    the batch's statistics mixed with a momentum of earlier rounds' (``momentum`` 0: off)."""

    def __init__(self, module: nn.modules.batchnorm._BatchNorm, momentum: float) -> None:
        self.module = module
        self.momentum = float(momentum)
        self.running: tuple[torch.Tensor, torch.Tensor] | None = None
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None
        self.loss: torch.Tensor | None = None
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module: Any, inputs: Any, output: Any) -> None:
        x = inputs[0]
        dims = [0, *range(2, x.dim())]
        mean = x.mean(dims)
        var = x.var(dims, unbiased=False)
        if self.running is not None:
            m = self.momentum
            mean = (1 - m) * mean + m * self.running[0]
            var = (1 - m) * var + m * self.running[1]
        self.loss = (torch.norm(module.running_var - var, 2)
                     + torch.norm(module.running_mean - mean, 2))
        self.last = (x.mean(dims).detach(), x.var(dims, unbiased=False).detach())

    def end_round(self) -> None:
        """Fold the last batch's statistics into the momentum (after a synthesis round)."""
        if self.momentum == 0 or self.last is None:
            return
        if self.running is None:
            self.running = self.last
        else:
            m = self.momentum
            self.running = (m * self.running[0] + (1 - m) * self.last[0],
                            m * self.running[1] + (1 - m) * self.last[1])

    def remove(self) -> None:
        self.handle.remove()


def batch_norm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The model's batch-norm layers that keep running statistics (the ones ``L_bn`` can
    match); none for models without batch norm (``mlp``, group-norm models)."""
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
            and m.running_mean is not None]


def random_shift(x: torch.Tensor, pad: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Each image translated by up to ``pad`` pixels (zero padding + a random crop back to
    its size, the authors' ``RandomCrop(padding=...)``) and, with ``flip``, mirrored with
    probability 1/2; differentiable in ``x``."""
    n, c, h, w = x.shape
    out = x
    if pad > 0:
        padded = F.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device)[None])[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=x.device)[None])[:, None, None, :]
        out = padded[torch.arange(n, device=x.device)[:, None, None, None],
                     torch.arange(c, device=x.device)[None, :, None, None], rows, cols]
    if flip:
        mirror = (torch.rand(n, generator=gen) < 0.5).to(x.device)[:, None, None, None]
        out = torch.where(mirror, out.flip(3), out)
    return out


def kl_rows(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0
            ) -> torch.Tensor:
    """Per-row ``KL(softmax(teacher/T) || softmax(student/T))``."""
    t = float(temperature)
    return F.kl_div(F.log_softmax(student / t, dim=1), F.softmax(teacher / t, dim=1),
                    reduction="none").sum(dim=1)


@attrs.frozen
class SynthesisSettings:
    """The synthesis hyperparameters (the ``target`` fusion's options of the same names)."""

    rounds: int
    steps: int
    batch_size: int
    latent_dim: int
    generator_width: int
    generator_lr: float
    latent_lr: float
    ce_weight: float
    bn_weight: float
    adv_weight: float
    bn_momentum: float
    warmup: int
    shift: int
    flip: bool
    student_steps: int
    student_batch_size: int
    student_lr: float
    student_temperature: float


@attrs.frozen(eq=False)
class SyntheticSet:
    """What synthesis produced: the inputs, the labels they were generated for, the
    teacher's logits on them (every output) and the classes they were generated for."""

    x: torch.Tensor
    y: torch.Tensor
    teacher_logits: torch.Tensor
    classes: tuple[int, ...]
    #: per round: mean loss of the generator's last step, and the student's agreement with
    #: the teacher on the synthetic set (NaN before the warm-up ends)
    history: list[dict[str, float]]


def synthesize(teacher: nn.Module, classes: Sequence[int], shape: Sequence[int],
               settings: SynthesisSettings, *, seed: int, device: str = "cpu",
               build_student: Callable[[], nn.Module] | None = None) -> SyntheticSet:
    """A synthetic set of ``settings.rounds * settings.batch_size`` inputs of ``shape`` for
    ``classes`` from ``teacher`` (left unchanged). ``build_student`` builds the server-side
    student (needed when ``adv_weight > 0`` and ``warmup < rounds``)."""
    s = settings
    cols = torch.as_tensor(sorted(int(c) for c in classes), dtype=torch.long, device=device)
    if len(cols) == 0:
        raise ValueError("synthesis needs at least one class the teacher has learnt")
    teacher = copy.deepcopy(teacher).to(device).eval()
    teacher.requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = ImageGenerator(s.latent_dim, s.generator_width, shape).to(device).train()
    student: nn.Module | None = None
    if s.adv_weight > 0 or s.student_steps > 0:
        if s.warmup < s.rounds:
            if build_student is None:
                raise ValueError("synthesis with a student (adv_weight > 0 or student_steps > 0) "
                                 "needs build_student")
            with torch.random.fork_rng(devices=[]):
                student = build_student().to(device)
    meta = torch.optim.Adam(generator.parameters(), lr=s.generator_lr * s.steps,
                            betas=(0.5, 0.999))
    hooks = [BatchNormStatistics(m, s.bn_momentum) for m in batch_norm_layers(teacher)]
    student_opt = sched = None
    if student is not None:
        student_opt = torch.optim.SGD(student.parameters(), lr=s.student_lr, momentum=0.9,
                                      weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(student_opt, 200, eta_min=2e-4)
    pool_x: list[torch.Tensor] = []
    pool_y: list[torch.Tensor] = []
    pool_t: list[torch.Tensor] = []
    history: list[dict[str, float]] = []
    try:
        for r in range(s.rounds):
            adversarial = student is not None and s.adv_weight > 0 and r >= s.warmup
            z = torch.randn(s.batch_size, s.latent_dim, generator=gen).to(device)
            z.requires_grad_(True)
            pick = torch.randint(0, len(cols), (s.batch_size,), generator=gen)
            target = cols[pick.to(device)]
            fast = copy.deepcopy(generator)
            opt = torch.optim.Adam([{"params": fast.parameters()},
                                    {"params": [z], "lr": s.latent_lr}],
                                   lr=s.generator_lr, betas=(0.5, 0.999))
            meta.zero_grad(set_to_none=True)
            for p in generator.parameters():
                p.grad = torch.zeros_like(p)
            best_cost, best = math.inf, None
            if student is not None:
                student.eval()
                student.requires_grad_(False)
            for _ in range(s.steps):
                x = fast(z)
                x_aug = random_shift(x, s.shift, s.flip, gen)
                t_out = teacher(x_aug)
                loss = s.ce_weight * F.cross_entropy(t_out, target)
                if hooks and s.bn_weight > 0:
                    loss = loss + s.bn_weight * sum(h.loss for h in hooks)
                if adversarial:
                    s_out = student(x_aug)
                    agree = (s_out.argmax(1) == t_out.argmax(1)).float()
                    loss = loss - s.adv_weight * (kl_rows(s_out, t_out) * agree).mean()
                cost = float(loss.detach())
                if cost < best_cost or best is None:
                    best_cost, best = cost, x.detach()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                for p, fp in zip(generator.parameters(), fast.parameters(), strict=True):
                    if fp.grad is not None:  # first-order MAML: the fast copy's gradients
                        p.grad += fp.grad
                opt.step()
            meta.step()
            for h in hooks:
                h.end_round()
            with torch.no_grad():
                pool_x.append(best)
                pool_y.append(target)
                pool_t.append(teacher(best))
            agreement = float("nan")
            if student is not None and r >= s.warmup and s.student_steps > 0:
                agreement = _distil_student(student, student_opt, torch.cat(pool_x),
                                            torch.cat(pool_t), s, gen)
                sched.step()
            history.append({"loss": best_cost, "student_agreement": agreement})
    finally:
        for h in hooks:
            h.remove()
    x = torch.cat(pool_x).cpu()
    return SyntheticSet(x=x, y=torch.cat(pool_y).cpu(), teacher_logits=torch.cat(pool_t).cpu(),
                        classes=tuple(int(c) for c in cols.tolist()), history=history)


def _distil_student(student: nn.Module, optimizer: Any, x: torch.Tensor,
                    teacher_logits: torch.Tensor, s: SynthesisSettings,
                    gen: torch.Generator) -> float:
    """``student_steps`` SGD steps of ``T^2 KL(teacher || student)`` at ``student_temperature``
    on mini-batches of the synthetic set; returns the student's agreement (top-1) with the
    teacher on it afterwards."""
    student.requires_grad_(True)
    student.train()
    t = float(s.student_temperature)
    n = len(x)
    order, pos = torch.randperm(n, generator=gen), 0
    for _ in range(s.student_steps):
        if pos >= n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos:pos + s.student_batch_size]
        pos += s.student_batch_size
        if len(idx) == 1 and n > 1:  # a lone example breaks batch norm
            continue
        idx = idx.to(x.device)
        loss = kl_rows(student(x[idx]), teacher_logits[idx], t).mean() * t * t
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    student.eval()
    student.requires_grad_(False)
    with torch.no_grad():
        agree = student(x).argmax(1) == teacher_logits.argmax(1)
    return float(agree.float().mean())
