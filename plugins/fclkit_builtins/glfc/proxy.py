"""GLFC's proxy server and its prototype-gradient communication (Sec. 3.4 of the paper).

Client side (:func:`prototype_gradients`), at the first round of a task, for each class
of the task:

1. the *prototype*: the training example whose L2-normalised feature (the input of the
   small model's last linear layer) is nearest to the class's mean normalised feature;
2. a *perturbation* of it: ``proto_steps`` steps of gradient descent on the input that
   lower the small model's cross-entropy of the class (the authors' code does this; the
   model is not changed);
3. the gradient of the cross-entropy of a fixed, randomly initialised *gradient encoding
   network* (LeNet for images, :func:`build_encoder`) at the perturbed prototype, with
   respect to the encoder's parameters. Only this gradient is uploaded -- not the
   example, not its label.

Server side (:class:`ProxyServer`): the label of each gradient is read from the sign
of the last layer's gradient (:func:`infer_label`: the row of the true class is the only
negative one); the input is reconstructed by gradient inversion (:func:`reconstruct`:
L-BFGS on a random input until its encoder gradient matches the uploaded one); the last
``recon_samples`` iterates of each inversion, with the inferred label, form the task's
*monitor set*. Every round's global model is scored on it; the best of a task is the
old model of the next task's relation distillation.

Imports torch: only imported when the fusion or a client side runs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fclkit.errors import ConfigError
from fclkit.runtime.seeding import derive_seed
from fclkit.stream import images_as_float

#: payload keys: ``glfc/proto/<i>/<j>`` is parameter ``j``'s gradient for prototype ``i``
PROTO_PREFIX = "glfc/proto/"
#: payload key of the input shape the gradients were computed for
SHAPE_KEY = "glfc/input_shape"
#: hidden width of the encoder for inputs that are not images (C, H, W)
MLP_HIDDEN = 128


def build_encoder(input_shape: Sequence[int], num_classes: int, seed: int) -> nn.Module:
    """The gradient encoding network, the same on every client and on the server.

    Images ``(C, H, W)``: the paper's LeNet (three 5x5 convolutions with 12 channels,
    strides 2, 2, 1, sigmoid activations, a linear layer over the flattened output);
    other inputs: flatten, a linear layer of ``MLP_HIDDEN`` units, sigmoid, a linear
    layer. Every weight and bias is drawn uniformly from [-0.5, 0.5] (as the authors'
    code) by a generator seeded from ``seed``; the encoder is never trained.
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 3:
        c, h, w = shape
        body = nn.Sequential(
            nn.Conv2d(c, 12, 5, padding=2, stride=2), nn.Sigmoid(),
            nn.Conv2d(12, 12, 5, padding=2, stride=2), nn.Sigmoid(),
            nn.Conv2d(12, 12, 5, padding=2, stride=1), nn.Sigmoid(), nn.Flatten())
        h2, w2 = math.ceil(math.ceil(h / 2) / 2), math.ceil(math.ceil(w / 2) / 2)
        encoder = nn.Sequential(body, nn.Linear(12 * h2 * w2, num_classes))
    else:
        encoder = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), MLP_HIDDEN),
                                nn.Sigmoid(), nn.Linear(MLP_HIDDEN, num_classes))
    g = torch.Generator().manual_seed(derive_seed(seed, "glfc-encoder"))
    with torch.no_grad():
        for p in encoder.parameters():
            p.copy_(torch.rand(p.shape, generator=g) - 0.5)
    for p in encoder.parameters():
        p.requires_grad_(False)
    return encoder


def tokens_refused(what: str) -> ConfigError:
    """The error for a proxy server asked to invert token ids (``what`` describes them)."""
    return ConfigError(
        "fusion_options.proxy", True,
        "GLFC's proxy server reconstructs inputs by gradient inversion, which needs "
        f"continuous inputs (images, tabular), and {what}",
        hint="--fusion-opt proxy=false (the old model is then the previous task's last "
             "global model)")


def require_continuous(x: torch.Tensor) -> None:
    """Gradient inversion reconstructs continuous inputs; token ids are not (images
    stored as ``uint8`` are: see :func:`fclkit.stream.images_as_float`)."""
    if not torch.is_floating_point(x) and x.dtype != torch.uint8:
        raise tokens_refused(f"these are {x.dtype} (token ids)")


# ----------------------------------------------------------------- client side


def features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the small model's last ``nn.Linear`` receives for ``x`` (its logits when it has
    no linear layer), flattened per example."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        return model(x).flatten(1)
    seen: list[torch.Tensor] = []
    handle = linears[-1].register_forward_hook(lambda m, inputs, out: seen.append(inputs[0]))
    try:
        model(x)
    finally:
        handle.remove()
    return seen[-1].flatten(1)


def select_prototype(model: nn.Module, x: torch.Tensor) -> int:
    """Index of the example of ``x`` (one class) nearest to the class's mean L2-normalised
    feature."""
    with torch.no_grad():
        z = F.normalize(features(model, x).float(), dim=1)
        return int((z - z.mean(0, keepdim=True)).norm(dim=1).argmin())


def perturb(model: nn.Module, x: torch.Tensor, label: int, steps: int, lr: float
            ) -> torch.Tensor:
    """``steps`` steps of gradient descent on the input ``x`` (one example) lowering the
    model's cross-entropy of ``label``; the model's parameters are not touched."""
    data = x.detach().clone().unsqueeze(0).requires_grad_(True)
    target = torch.tensor([label], device=x.device)
    for _ in range(steps):
        loss = F.cross_entropy(model(data), target)
        (grad,) = torch.autograd.grad(loss, [data])
        with torch.no_grad():
            data -= lr * grad
    return data.detach().squeeze(0)


def encoder_gradient(encoder: nn.Module, x: torch.Tensor, label: int) -> list[torch.Tensor]:
    """Gradient of the encoder's cross-entropy at ``x`` (one example) w.r.t. its parameters."""
    params = list(encoder.parameters())
    with torch.enable_grad():
        for p in params:
            p.requires_grad_(True)
        try:
            loss = F.cross_entropy(encoder(x.unsqueeze(0)), torch.tensor([label],
                                                                      device=x.device))
            grads = torch.autograd.grad(loss, params)
        finally:
            for p in params:
                p.requires_grad_(False)
    return [g.detach() for g in grads]


def prototype_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                        classes: Sequence[int], *, num_classes: int, seed: int,
                        steps: int, lr: float) -> dict[str, torch.Tensor]:
    """The payload of a client at a task's first round: one perturbed prototype gradient
    per class of ``classes`` that has training examples, and the input shape."""
    require_continuous(x)
    x = images_as_float(x)  # uint8 images: the prototypes are float32 in [0, 1]
    device = next(model.parameters()).device
    encoder = build_encoder(tuple(x.shape[1:]), num_classes, seed).to(device)
    was_training = model.training
    model.eval()
    payload: dict[str, torch.Tensor] = {}
    try:
        index = 0
        for c in classes:
            rows = (y == int(c)).nonzero().flatten()
            if len(rows) == 0:
                continue
            xc = x[rows].to(device)
            proto = xc[select_prototype(model, xc)]
            proto = perturb(model, proto, int(c), steps, lr)
            for j, grad in enumerate(encoder_gradient(encoder, proto, int(c))):
                payload[f"{PROTO_PREFIX}{index}/{j}"] = grad.cpu()
            index += 1
    finally:
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    if payload:
        payload[SHAPE_KEY] = torch.tensor(list(x.shape[1:]), dtype=torch.long)
    return payload


# ----------------------------------------------------------------- server side


def unpack(payload: Mapping[str, torch.Tensor]) -> tuple[tuple[int, ...] | None,
                                                         list[list[torch.Tensor]]]:
    """(input shape, one list of parameter gradients per prototype) from a payload."""
    shape = payload.get(SHAPE_KEY)
    protos: dict[int, dict[int, torch.Tensor]] = {}
    for key, value in payload.items():
        if not key.startswith(PROTO_PREFIX):
            continue
        i, j = (int(part) for part in key[len(PROTO_PREFIX):].split("/"))
        protos.setdefault(i, {})[j] = value
    grads = [[parts[j] for j in sorted(parts)] for _, parts in sorted(protos.items())]
    return (None if shape is None else tuple(int(s) for s in shape.tolist())), grads


def infer_label(grads: Sequence[torch.Tensor]) -> int:
    """The label a prototype gradient was computed for: the row of the last linear layer's
    weight gradient with the smallest sum (``(p_c - 1) h`` for the true class ``c``, with
    ``h > 0`` after a sigmoid, is the only negative row)."""
    return int(grads[-2].sum(dim=-1).argmin())


def reconstruct(encoder: nn.Module, grads: Sequence[torch.Tensor], label: int,
                input_shape: Sequence[int], *, steps: int, lr: float, keep: int,
                generator: torch.Generator) -> torch.Tensor:
    """Gradient inversion: ``keep`` inputs (the last iterates of ``steps`` L-BFGS steps)
    whose encoder gradient for ``label`` matches ``grads``.

    Starts from standard-normal noise; minimises ``sum ||grad(dummy) - grads||^2``. When an
    L-BFGS step leaves the input unchanged (converged: its gradient is below L-BFGS's
    tolerance, and every later step would return at once as well), the remaining steps'
    iterates equal the last one, so they are filled in without being run.
    """
    device = next(encoder.parameters()).device
    params = list(encoder.parameters())
    target_grads = [g.to(device) for g in grads]
    dummy = torch.randn((1, *input_shape), generator=generator).to(device).requires_grad_(True)
    label_t = torch.tensor([label], device=device)
    optimizer = torch.optim.LBFGS([dummy], lr=lr)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        with torch.enable_grad():
            for p in params:
                p.requires_grad_(True)
            try:
                loss = F.cross_entropy(encoder(dummy), label_t)
                dummy_grads = torch.autograd.grad(loss, params, create_graph=True)
                diff = sum(((a - b) ** 2).sum() for a, b in zip(dummy_grads, target_grads,
                                                                 strict=True))
                diff.backward(inputs=[dummy])
            finally:
                for p in params:
                    p.requires_grad_(False)
        return diff.detach()

    iterates: list[torch.Tensor] = []
    for step in range(steps):
        before = dummy.detach().clone()
        optimizer.step(closure)
        now = dummy.detach().clone()
        iterates.append(now)
        iterates = iterates[-keep:]
        if torch.equal(before, now):
            iterates += [now] * min(keep, steps - 1 - step)
            iterates = iterates[-keep:]
            break
    return torch.cat(iterates).cpu()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of ``model`` on ``x, y`` (in eval mode, without gradient)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            pred = model(x.to(device)).argmax(dim=1).cpu()
    finally:
        model.train(was_training)
    return float((pred == y).float().mean())


class ProxyServer:
    """Reconstructs each task's prototypes and keeps the task's best-scoring global model.

    ``observe(task, round, uploads, global_model)`` after every fusion: at a new task the
    monitor set and the best model are reset; the uploads' prototype gradients are
    reconstructed into the monitor set; the global model is scored on it and becomes the
    task's best (:attr:`best_round`, :attr:`best_state`) when it scores at least as well
    as the best so far (the later round wins a tie, as in the authors' code). Without a
    monitor set (no prototype gradient arrived yet, or the proxy is off) the latest
    round is the best.
    """

    def __init__(self, *, num_classes: int, seed: int, device: str, enabled: bool,
                 steps: int, lr: float, keep: int) -> None:
        self.num_classes = num_classes
        self.seed = seed
        self.device = device
        self.enabled = enabled
        self.steps, self.lr, self.keep = steps, lr, keep
        self.task: int | None = None
        self.monitor_x: torch.Tensor | None = None
        self.monitor_y: torch.Tensor | None = None
        self.best_score: float | None = None
        self.best_round: int | None = None
        #: weights of the best global model of the task so far (a copy, on the CPU)
        self.best_state: dict[str, torch.Tensor] | None = None
        #: labels of the reconstructed prototypes of the current task (inferred)
        self.labels: list[int] = []
        self._encoders: dict[tuple[int, ...], nn.Module] = {}

    def _encoder(self, shape: tuple[int, ...]) -> nn.Module:
        if shape not in self._encoders:
            self._encoders[shape] = build_encoder(shape, self.num_classes,
                                                  self.seed).to(self.device)
        return self._encoders[shape]

    def start_task(self, task: int) -> None:
        self.task = task
        self.monitor_x = self.monitor_y = None
        self.best_score = self.best_round = self.best_state = None
        self.labels = []

    def add_prototypes(self, client_id: int, round: int, payload: Mapping[str, torch.Tensor]
                       ) -> None:
        shape, protos = unpack(payload)
        if shape is None or not protos:
            return
        xs, ys = [], []
        for i, grads in enumerate(protos):
            label = infer_label(grads)
            g = torch.Generator().manual_seed(derive_seed(self.seed, "glfc-inversion",
                                                          self.task, round, client_id, i))
            xs.append(reconstruct(self._encoder(shape), grads, label, shape, steps=self.steps,
                                  lr=self.lr, keep=self.keep, generator=g))
            ys.append(torch.full((len(xs[-1]),), label, dtype=torch.long))
            self.labels.append(label)
        x, y = torch.cat(xs), torch.cat(ys)
        if self.monitor_x is not None and self.monitor_y is not None:
            x, y = torch.cat([self.monitor_x, x]), torch.cat([self.monitor_y, y])
        self.monitor_x, self.monitor_y = x, y

    def observe(self, task: int, round: int, uploads: Sequence[Any], global_model: nn.Module
                ) -> None:
        if task != self.task:
            self.start_task(task)
        if self.enabled:
            for u in sorted(uploads, key=lambda u: u.client_id):
                self.add_prototypes(u.client_id, round, u.payload)
        if self.monitor_x is None or self.monitor_y is None:
            score = None
        else:
            score = accuracy(global_model, self.monitor_x, self.monitor_y)
            if self.best_score is not None and score < self.best_score:
                return
        self.best_score, self.best_round = score, round
        self.best_state = {k: v.detach().cpu().clone()
                           for k, v in global_model.state_dict().items()}

    # ---------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "task": self.task, "best_score": self.best_score, "best_round": self.best_round,
            "best_state": self.best_state, "labels": list(self.labels)}
        if self.monitor_x is not None:
            state["monitor_x"], state["monitor_y"] = self.monitor_x, self.monitor_y
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.task = state.get("task")
        self.best_score = state.get("best_score")
        self.best_round = state.get("best_round")
        best = state.get("best_state")
        self.best_state = None if best is None else dict(best)
        self.labels = [int(c) for c in state.get("labels", [])]
        self.monitor_x = state.get("monitor_x")
        self.monitor_y = state.get("monitor_y")
