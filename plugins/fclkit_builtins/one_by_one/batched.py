"""Batched one-by-one distillation: every FM part of a round distilled in one computation.

One-by-one distils K teachers into K personalised FM parts and a global one, one
teacher at a time: K·(K+1) distillations of a tiny head per round, each a few
dozen Adam steps whose cost is PyTorch's per-operation overhead, not arithmetic.
Here the K+1 parts ("lanes") advance together: at step s every lane distils
*its own* s-th teacher (the teacher orders differ per lane), so a round costs K
steps of one batched computation instead of K·(K+1) small ones.

* :class:`StackedHead` -- the L copies of a frozen-backbone FM's head (``nn.Linear``,
  or an ``nn.Sequential`` of ``Linear`` and ``ReLU``, as
  :class:`~fclkit.foundation.FrozenBackboneFoundationModel` builds them) as stacked
  tensors, weights ``(L, out, in)``, applied with ``torch.baddbmm``;
* :class:`StackedAdam` -- Adam over the stacked tensors. Adam is element-wise, so one
  Adam over them is L independent ``torch.optim.Adam`` (same operations, same order),
  with a per-lane mask for lanes that have no mini-batch at an iteration (ragged
  lanes: their moments, step count and parameters stay as they are);
* :func:`masked_log_softmax` -- a softmax restricted to a per-lane set of columns, the
  full-width equivalent of selecting the columns first;
* :func:`distil_lanes` -- one-by-one's distillation (:meth:`OneByOneDistillation._distil`)
  for all lanes at once: anchors, teacher classes, label term, ``min_confidence``,
  ``teacher_trust``, and the same per-(lane, step) random generators, which fix each
  lane's mini-batch permutation and label-term draws. Lanes' mini-batches are gathered
  per lane (index tensors ``(L, B)``); where lanes' batches differ in size, rows are
  padded and weigh 0, and every mean divides by the lane's own batch size, so each
  lane's loss, and its gradient, is the sequential one.

The results equal the sequential path's to float rounding (tests/test_one_by_one.py).
Other fusions that distil into many heads (e.g. FedDF-style ensembles) can reuse the
first three pieces.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Lane", "StackedAdam", "StackedHead", "distil_lanes", "masked_log_softmax"]


def masked_log_softmax(x: Any, mask: Any) -> Any:
    """``log_softmax`` over the columns where ``mask`` (broadcast to ``x``) is True; 0
    elsewhere (gradient 0 there, no NaN). A row with no column gets a plain log_softmax
    over every column: weigh such rows 0."""
    mask = mask | ~mask.any(dim=-1, keepdim=True)
    return x.masked_fill(~mask, float("-inf")).log_softmax(dim=-1).masked_fill(~mask, 0.0)


class StackedHead:
    """A head made of ``Linear`` and ``ReLU`` layers (possibly in an ``nn.Sequential``),
    applied with L parameter sets at once."""

    def __init__(self, layers: list[tuple[str, str, str | None]], names: list[str]):
        #: ("linear", weight name, bias name or None) or ("relu", "", None), in order
        self.layers = layers
        #: the head's parameter names, in ``named_parameters`` order
        self.names = names

    @classmethod
    def of(cls, head: Any) -> StackedHead | None:
        """The stacked form of ``head``, or None when it has other layers."""
        from torch import nn

        layers: list[tuple[str, str, str | None]] = []

        def walk(module: Any, prefix: str) -> bool:
            if isinstance(module, nn.Linear):
                layers.append(("linear", prefix + "weight",
                               None if module.bias is None else prefix + "bias"))
                return True
            if isinstance(module, nn.ReLU):
                layers.append(("relu", "", None))
                return True
            if type(module) is nn.Sequential:
                return all(walk(child, f"{prefix}{name}.")
                           for name, child in module.named_children())
            return False

        if not walk(head, ""):
            return None
        names = [n for n, _ in head.named_parameters()]
        used = {n for _, w, b in layers for n in (w, b) if n}
        if set(names) != used or not layers or layers[-1][0] != "linear":
            return None
        return cls(layers, names)

    @property
    def output_params(self) -> list[int]:
        """Positions (in :attr:`names`) of the output layer's weight and bias: their
        rows are the classes."""
        _, w, b = [layer for layer in self.layers if layer[0] == "linear"][-1]
        return [self.names.index(n) for n in (w, b) if n]

    @property
    def single_linear(self) -> bool:
        return len(self.layers) == 1

    def stack(self, states: Sequence[dict[str, Any]], prefix: str, device: Any,
              dtype: Any) -> list:
        """Leaf tensors ``(L, *shape)``, one per parameter, from L state dicts (keys
        ``prefix + name``)."""
        import torch

        return [torch.stack([torch.as_tensor(s[prefix + n]) for s in states]).to(
            device=device, dtype=dtype).requires_grad_(True) for n in self.names]

    def unstack(self, params: Sequence[Any], prefix: str) -> list[dict[str, Any]]:
        """L state dicts (CPU copies) from the stacked tensors."""
        lanes = params[0].shape[0]
        cpu = [p.detach().cpu() for p in params]
        return [{prefix + n: t[i].clone() for n, t in zip(self.names, cpu, strict=True)}
                for i in range(lanes)]

    def forward(self, params: Sequence[Any], x: Any) -> Any:
        """``x``: ``(L, R, in)`` (each lane its own rows) or ``(R, in)`` (the same rows for
        every lane); returns the logits ``(L, R, out)``."""
        return self.forward_t(params, x).transpose(1, 2)

    def forward_t(self, params: Sequence[Any], x: Any) -> Any:
        """:meth:`forward`, classes first: ``(L, out, R)``, contiguous (a softmax over
        few classes runs much faster over dim 1 of this layout than over the last dim)."""
        import torch

        p = dict(zip(self.names, params, strict=True))
        lanes = params[0].shape[0]
        *hidden, (_, w_name, b_name) = self.layers
        for kind, h_w, h_b in hidden:
            if kind == "relu":
                x = torch.relu(x)
                continue
            w = p[h_w]
            b = p[h_b] if h_b else None
            if x.dim() == 2:  # shared rows: one GEMM over every lane's weights
                out = x @ w.reshape(-1, w.shape[-1]).T  # (R, L * out)
                if b is not None:
                    out = out + b.reshape(-1)
                x = out.view(x.shape[0], lanes, -1).transpose(0, 1)
            elif b is not None:
                x = torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))
            else:
                x = torch.bmm(x, w.transpose(1, 2))
        w = p[w_name]
        b = p[b_name] if b_name else None
        if x.dim() == 2:  # shared rows, a single linear layer: one GEMM
            flat = w.reshape(-1, w.shape[-1])
            out = flat @ x.T if b is None else torch.addmm(b.reshape(-1, 1), flat, x.T)
            return out.view(lanes, -1, x.shape[0])
        if b is None:
            return torch.bmm(w, x.transpose(1, 2))
        return torch.baddbmm(b.unsqueeze(2), w, x.transpose(1, 2))


class StackedAdam:
    """``torch.optim.Adam`` (no weight decay, no amsgrad) over stacked tensors whose
    first dimension is the lane, with a step count per lane: lanes that are not
    ``active`` at a step keep their moments, step count and parameters.

    Runs torch's fused Adam kernel (one pass per tensor, as ``Adam(fused=True)``) over
    the lanes' slices; the same update as the default (for-loop) Adam to float rounding.
    """

    def __init__(self, params: Sequence[Any], lr: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        import torch

        self.lr, (self.beta1, self.beta2), self.eps = lr, betas, eps
        self.params = [p.detach() for p in params]
        if not all(p.is_contiguous() for p in self.params):
            raise ValueError("StackedAdam updates contiguous tensors only")
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        lanes = self.params[0].shape[0]
        self.steps = torch.zeros(lanes, dtype=torch.float32, device=self.params[0].device)
        self._steps = self.steps.unbind(0)  # one 0-dim step tensor per lane
        self._equal = True  # every lane has made as many steps

    def step(self, grads: Sequence[Any], active: Sequence[bool] | None = None) -> None:
        """One Adam step of the ``active`` lanes (default: all) with ``grads`` (stacked)."""
        import torch

        # the fused kernel reads a gradient's memory in its parameter's order: a gradient
        # with other strides (e.g. of a weight used transposed) would be read scrambled
        grads = [g.contiguous() for g in grads]
        if active is None or all(active):
            self.steps.add_(1)
            if self._equal:  # the stacked tensors at once
                self._fused(self.params, grads, self.exp_avg, self.exp_avg_sq,
                            [self._steps[0]] * len(self.params))
                return
            lanes = list(range(len(self._steps)))
        else:
            lanes = [i for i, a in enumerate(active) if a]
            if not lanes:
                return
            self._equal = False
            torch._foreach_add_([self._steps[i] for i in lanes], 1)
        ps, gs, ms, vs, ss = [], [], [], [], []
        for p, g, m, v in zip(self.params, grads, self.exp_avg, self.exp_avg_sq, strict=True):
            views = p.unbind(0), g.unbind(0), m.unbind(0), v.unbind(0)
            for i in lanes:
                ps.append(views[0][i])
                gs.append(views[1][i])
                ms.append(views[2][i])
                vs.append(views[3][i])
                ss.append(self._steps[i])
        self._fused(ps, gs, ms, vs, ss)

    #: False once torch's private fused kernel turned out to be missing or to take other
    #: arguments (another torch version): the plain-tensor update is used from then on
    fused_kernel = True

    def _fused(self, ps: list, gs: list, ms: list, vs: list, ss: list) -> None:
        import torch

        if type(self).fused_kernel and hasattr(torch, "_fused_adam_"):
            try:
                torch._fused_adam_(ps, gs, ms, vs, [], ss, amsgrad=False, lr=self.lr,
                                   beta1=self.beta1, beta2=self.beta2, weight_decay=0.0,
                                   eps=self.eps, maximize=False, grad_scale=None,
                                   found_inf=None)
                return
            except (TypeError, RuntimeError, NotImplementedError):
                type(self).fused_kernel = False  # nothing was updated: fall through
        self._plain(ps, gs, ms, vs, ss)

    def _plain(self, ps: list, gs: list, ms: list, vs: list, ss: list) -> None:
        """Adam's update written out (torch's single-tensor Adam, to float rounding)."""
        import math

        b1, b2 = self.beta1, self.beta2
        for p, g, m, v, s in zip(ps, gs, ms, vs, ss, strict=True):
            step = float(s)
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v.sqrt() / math.sqrt(1 - b2 ** step)).add_(self.eps)
            p.addcdiv_(m, denom, value=-self.lr / (1 - b1 ** step))


@dataclass
class Lane:
    """One FM part to distil: its state, the classes it knows, its teachers in order
    (client ids) and the parts of its random generators' seeds."""

    state: dict[str, Any]
    known: list[int]
    teachers: list[int]
    seed_parts: tuple


def distil_lanes(fusion: Any, head: StackedHead, z_pub: Any, lanes: Sequence[Lane],
                 teachers: dict[int, tuple[Any, list[int]]]) -> list[tuple[dict, list]]:
    """:meth:`OneByOneDistillation._distil` for every lane at once; (state, classes) per
    lane. ``z_pub``: the public set's backbone features; ``teachers``: client id ->
    (teacher logits on the public set, the classes it is distilled on)."""
    import torch

    from fclkit.runtime.seeding import derive_seed

    from .distillation import soft_targets

    o = fusion.options
    device = z_pub.device
    n = z_pub.shape[0]
    tau = float(o.temperature)
    num_classes = int(teachers[next(iter(teachers))][0].shape[1])
    L = len(lanes)
    if L == 0:
        return []
    steps = len(lanes[0].teachers)
    if any(len(lane.teachers) != steps for lane in lanes):
        raise ValueError("every lane needs as many teachers")
    prefix = "head."
    dtype = z_pub.dtype
    params = head.stack([lane.state for lane in lanes], prefix, device, dtype)
    known = [sorted(lane.known) for lane in lanes]

    # per teacher, fixed during the round: soft targets (full width, 0 outside its
    # classes), its columns, the rows it is distilled on, its trust per row
    ids = sorted(teachers)
    slot = {u: i for i, u in enumerate(ids)}
    t_targets = torch.zeros(len(ids), n, num_classes, dtype=dtype)
    t_mask = torch.zeros(len(ids), num_classes, dtype=torch.bool)
    t_trust = torch.ones(len(ids), n, dtype=dtype)
    t_rows: list[Any] = []
    drop_labelled = (o.label_weight > 0 and len(fusion.labelled_index)
                     and not o.distil_labelled)
    for i, u in enumerate(ids):
        logits, classes = teachers[u]
        cols = torch.tensor(classes, dtype=torch.long)
        if len(classes):
            t_targets[i][:, cols] = soft_targets(logits, tau, classes).to(t_targets.dtype)
        t_mask[i, cols] = True
        rows = torch.arange(n)
        if drop_labelled:
            rows = rows[~torch.isin(rows, fusion.labelled_index)]
        if o.min_confidence > 0:
            conf = logits.index_select(1, cols).softmax(dim=1).max(dim=1).values
            rows = rows[conf[rows] >= o.min_confidence]
        t_rows.append(rows)
        trust = fusion._trust(logits, classes)
        if trust is not None:
            t_trust[i] = trust.to(dtype)
    t_targets, t_mask, t_trust = t_targets.to(device), t_mask.to(device), t_trust.to(device)
    label_terms: dict[tuple, Any] = {}  # classes -> fusion._label_term(classes)

    for s in range(steps):
        step = _Step(L, num_classes, o.epochs)
        for li, lane in enumerate(lanes):
            t_classes = teachers[lane.teachers[s]][1]
            # as OneByOneDistillation._distil, for this lane's s-th teacher
            keep = sorted(known[li] if o.anchor == "kd-all"
                          else set(known[li]) - set(t_classes))
            classes = tuple(sorted(set(known[li]) | set(t_classes)))
            if classes not in label_terms:
                label_terms[classes] = fusion._label_term(list(classes))
            labels = label_terms[classes]
            if o.anchor in ("kd", "kd-all") and keep and o.anchor_weight > 0:
                step.use_akd[li] = True
                step.keep_mask[li, keep] = True
            elif o.anchor == "l2" and known[li] and o.anchor_weight > 0:
                step.use_l2[li] = True
            rows = t_rows[slot[lane.teachers[s]]]
            step.use_kd[li] = len(rows) > 0
            gen = torch.Generator().manual_seed(derive_seed(fusion.context.seed, "obod",
                                                            *lane.seed_parts, s))
            step.add_batches(li, rows if len(rows) or labels is None else labels[0], labels,
                             o.batch_size, gen)
        if step.M:
            tu = torch.tensor([slot[lane.teachers[s]] for lane in lanes], device=device)
            _run_step(o, head, params, z_pub, step, tau, t_targets[tu], t_mask[tu], t_trust[tu])
        for li, lane in enumerate(lanes):
            known[li] = sorted(set(known[li]) | set(teachers[lane.teachers[s]][1]))
    states = head.unstack(params, prefix)
    return list(zip(states, known, strict=True))


class _Step:
    """What each lane does at one teacher step: its mini-batches (rows, sizes), its
    label-term draws, which loss terms it has."""

    def __init__(self, lanes: int, num_classes: int, epochs: int):
        import torch

        self.L, self.epochs = lanes, epochs
        self.keep_mask = torch.zeros(lanes, num_classes, dtype=torch.bool)
        self.lab_mask = torch.zeros(lanes, num_classes, dtype=torch.bool)
        self.use_kd, self.use_akd, self.use_l2 = [False] * lanes, [False] * lanes, \
            [False] * lanes
        self.batches: list[list[Any]] = [[] for _ in range(lanes)]  # rows per mini-batch
        self.sizes: list[list[int]] = [[] for _ in range(lanes)]
        self.picks: list[list[Any]] = [[] for _ in range(lanes)]  # label-term rows
        self.pick_classes: list[list[Any]] = [[] for _ in range(lanes)]
        self.pick_sizes: list[list[int]] = [[] for _ in range(lanes)]
        self.M = 0  # the most mini-batches of a lane

    def add_batches(self, li: int, batch_rows: Any, labels: Any, batch_size: int,
                    gen: Any) -> None:
        """Lane ``li``'s mini-batches over ``batch_rows`` and label-term draws, drawn
        from ``gen`` in the order of the sequential loop."""
        import torch

        n_rows = len(batch_rows)
        if labels is not None:
            lab_rows, lab_target, lab_cols = labels
            lab_class = lab_cols.cpu()[lab_target]
            self.lab_mask[li, lab_cols.cpu()] = True
            n_lab = len(lab_rows)
        for _ in range(self.epochs if n_rows else 0):
            order = batch_rows[torch.randperm(n_rows, generator=gen)]
            for i in range(0, n_rows, batch_size):
                size = min(batch_size, n_rows - i)
                self.batches[li].append(order[i:i + size])
                self.sizes[li].append(size)
                if labels is not None:
                    pick = torch.randint(n_lab, (min(n_lab, size),), generator=gen)
                    self.picks[li].append(lab_rows[pick])
                    self.pick_classes[li].append(lab_class[pick])
                    self.pick_sizes[li].append(min(n_lab, size))
        self.M = max(self.M, len(self.sizes[li]))

    def padded(self, per_lane: list[list[Any]], device: Any) -> Any:
        """``(L, M, most rows)``: each lane's index tensors, padded with 0."""
        import torch
        from torch.nn.utils.rnn import pad_sequence

        empty = torch.zeros(0, dtype=torch.long)
        flat = [b[j] if j < len(b) else empty for b in per_lane for j in range(self.M)]
        return pad_sequence(flat, batch_first=True).view(self.L, self.M, -1).to(device)

    def weights(self, sizes: list[list[int]], width: int, dtype: Any, device: Any) -> Any:
        """``(L, M, width)``: 1 / (the mini-batch's size) on its rows, 0 on padding."""
        import torch

        n = torch.tensor([s + [0] * (self.M - len(s)) for s in sizes], dtype=dtype)
        valid = torch.arange(width).view(1, 1, width) < n.unsqueeze(-1)
        return (valid / n.clamp(min=1).unsqueeze(-1)).to(device)


def _run_step(o: Any, head: StackedHead, params: list, z_pub: Any, step: _Step, tau: float,
              tgt: Any, tmask: Any, trust: Any) -> None:
    """One teacher step of every lane: its mini-batches, batched. ``tgt``, ``tmask``,
    ``trust``: each lane's teacher's soft targets ``(L, n, C)``, classes ``(L, C)`` and
    trust per row ``(L, n)``.

    Only the classes some lane's loss reads at this step are computed (``cols``): the
    output rows of the others get no gradient, so Adam leaves them exactly as they are.
    """
    import torch

    device, dtype = z_pub.device, z_pub.dtype
    L, M = step.L, step.M
    keep_mask, lab_mask = step.keep_mask.to(device), step.lab_mask.to(device)
    cols = torch.nonzero((tmask | keep_mask | lab_mask).any(dim=0)).flatten()
    if not len(cols):
        cols = torch.arange(tmask.shape[1], device=device)
    position = torch.full((tmask.shape[1],), -1, dtype=torch.long, device=device)
    position[cols] = torch.arange(len(cols), device=device)
    tmask, keep_mask, lab_mask = tmask[:, cols], keep_mask[:, cols], lab_mask[:, cols]
    tgt = tgt[..., cols]

    idx = step.padded(step.batches, device)  # (L, M, B)
    B = idx.shape[-1]
    per_row = step.weights(step.sizes, B, dtype, device)  # 1 / B_lane, 0 on padding
    lanes3 = torch.arange(L, device=device).view(L, 1, 1)

    def flags(values: list[bool]) -> Any:
        return torch.tensor(values, device=device, dtype=dtype).view(L, 1, 1)

    # the loss terms, classes first: (row weight x target (L, M, C', rows), columns)
    loss_terms = []
    if any(step.use_kd):  # the teacher, on the classes it is distilled on
        w_kd = per_row * trust[lanes3, idx] * (tau * tau) * flags(step.use_kd)
        loss_terms.append(((tgt[lanes3, idx] * w_kd.unsqueeze(-1)).transpose(2, 3), tmask))

    # output rows of the classes read at this step, as separate leaves; other tensors whole
    out_ix = head.output_params
    step_params = [p.detach()[:, cols].clone().requires_grad_(True) if i in out_ix else p
                   for i, p in enumerate(params)]
    if any(step.use_akd):  # the anchor: the lanes' parts as this teacher finds them
        with torch.no_grad():
            prev = head.forward_t(step_params, z_pub) / tau  # (L, C', n)
            keep = (keep_mask | ~keep_mask.any(dim=-1, keepdim=True)).unsqueeze(-1)
            prev_t = prev.masked_fill(~keep, float("-inf")).softmax(dim=1) * \
                keep_mask.unsqueeze(-1)
        w_a = per_row * (o.anchor_weight * tau * tau) * flags(step.use_akd)
        loss_terms.append(((prev_t.transpose(1, 2)[lanes3, idx] * w_a.unsqueeze(-1))
                           .transpose(2, 3), keep_mask))
    prev_params = None
    if any(step.use_l2):
        prev_params = [p.detach().clone() for p in step_params]
        l2_on = flags(step.use_l2).flatten()
    labels = None
    if any(step.pick_sizes):  # the server's labels: cross-entropy
        p_idx = step.padded(step.picks, device)
        p_cls = position[step.padded(step.pick_classes, device)]
        P = p_idx.shape[-1]
        w_lab = step.weights(step.pick_sizes, P, dtype, device) * o.label_weight
        onehot = torch.zeros(L, M, P, len(cols), device=device, dtype=dtype)
        onehot.scatter_(-1, p_cls.clamp(min=0).unsqueeze(-1), w_lab.unsqueeze(-1))
        labels = (onehot.transpose(2, 3).contiguous(),
                  ~(lab_mask | ~lab_mask.any(dim=-1, keepdim=True)).unsqueeze(-1))
        idx = torch.cat([idx, p_idx], dim=2)
    # per term: the columns its softmax hides (a lane without any: none, weight 0)
    terms = [(t.contiguous(), ~(m | ~m.any(dim=-1, keepdim=True)).unsqueeze(-1))
             for t, m in loss_terms]
    shared = head.single_linear  # one GEMM over all public rows beats gathering them
    if shared:
        idx = idx.unsqueeze(2).expand(L, M, len(cols), idx.shape[-1])
    active = [[j < len(s) for s in step.sizes] for j in range(M)]
    optimizer = StackedAdam(step_params, lr=o.lr)
    for j in range(M):
        if shared:
            out = head.forward_t(step_params, z_pub).gather(2, idx[:, j])  # (L, C', R)
        else:
            out = head.forward_t(step_params, z_pub[idx[:, j]])
        student = out[:, :, :B] / tau
        loss = out.new_zeros(())
        for target, hide in terms:
            log_p = student.masked_fill(hide, float("-inf")).log_softmax(dim=1)
            loss = loss - (target[:, j] * log_p.masked_fill(hide, 0.0)).sum()
        if labels is not None:
            target, hide = labels
            log_p = out[:, :, B:].masked_fill(hide, float("-inf")).log_softmax(dim=1)
            loss = loss - (target[:, j] * log_p.masked_fill(hide, 0.0)).sum()
        if prev_params is not None:
            loss = loss + o.anchor_weight * sum(
                (((p - q) ** 2).flatten(1).sum(1) * l2_on).sum()
                for p, q in zip(step_params, prev_params, strict=True))
        grads = torch.autograd.grad(loss, step_params)
        optimizer.step(grads, active[j])
    with torch.no_grad():
        for i in out_ix:
            params[i][:, cols] = step_params[i]
