"""A larger transfer set made from the server's public set: augmented views and mixes.

One-by-one distillation moves the small models' knowledge into the FM only through
their outputs on the public set, so its size bounds what arrives (docs/results.md,
"The public set's size"). These are our additions (not the paper's): both are made
once, under the run's seed, before the first round, so the frozen backbone's features
of every extra input are computed (and cached) once, and every teacher is read on the
same inputs in every round.

``views``
    ``views`` augmented copies of every public example: images get a random rotation
    (at most ``max_degrees``) and shift (at most ``max_shift`` of their side), texts a
    random contiguous crop of at least half their tokens. Views are label-preserving
    in spirit, but carry no label: only the server's ``public_labels`` examples do.
``mixes``
    ``mixes`` mixed examples per public example, each from two random public
    examples i and j with lambda ~ U(0, 1): images ``lambda x_i + (1 - lambda) x_j``
    (mixup, Zhang et al. 2018), texts the first ``lambda`` share of i's tokens followed
    by the last ``1 - lambda`` share of j's. Mixes carry no label.

The originals come first, so the public set's indices (and its labels) are unchanged.
"""

from __future__ import annotations

import math
from typing import Any

from fclkit.stream import UNLABELLED, PublicSet, images_as_float

#: the largest rotation (degrees) and shift (share of the side) of an image view
MAX_DEGREES, MAX_SHIFT = 15.0, 0.1


def _affine_views(x: Any, gen: Any) -> Any:
    """``x`` (float images ``(n, C, H, W)``) each rotated and shifted at random."""
    import torch
    import torch.nn.functional as F

    n, _, h, w = x.shape
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(MAX_DEGREES)
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * (2 * MAX_SHIFT)  # [-1, 1] coords
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos, -sin * h / w, shift[:, 0]], dim=1),
                         torch.stack([sin * w / h, cos, shift[:, 1]], dim=1)], dim=1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _lengths(x: Any) -> Any:
    """Tokens before the padding of every row (padding: trailing zeros)."""
    import torch

    nonzero = x != 0
    last = torch.where(nonzero.any(dim=1),
                       x.shape[1] - nonzero.flip(1).int().argmax(dim=1), torch.zeros_like(
                           x[:, 0]))
    return last.long()


def _text_views(x: Any, gen: Any) -> Any:
    """Every row of token ids cut to a random contiguous crop of at least half of it."""
    import torch

    out = torch.zeros_like(x)
    lengths = _lengths(x)
    for i in range(len(x)):
        n = int(lengths[i])
        if n == 0:
            continue
        keep = max(1, int(math.ceil(n * (0.5 + 0.5 * float(torch.rand(1, generator=gen))))))
        start = int(torch.randint(0, n - keep + 1, (1,), generator=gen))
        out[i, :keep] = x[i, start:start + keep]
    return out


def _text_mixes(x: Any, i: Any, j: Any, lam: Any) -> Any:
    """Row i's first ``lam`` share of tokens, then row j's last ``1 - lam`` share."""
    import torch

    out = torch.zeros(len(i), x.shape[1], dtype=x.dtype)
    lengths = _lengths(x)
    for r in range(len(i)):
        a, b = int(i[r]), int(j[r])
        head = int(round(float(lam[r]) * int(lengths[a])))
        tail = int(round((1 - float(lam[r])) * int(lengths[b])))
        part = torch.cat([x[a, :head], x[b, int(lengths[b]) - tail:int(lengths[b])]])
        out[r, :min(len(part), x.shape[1])] = part[:x.shape[1]]
    return out


def expand_public(public: PublicSet, modality: str, views: int, mixes: int,
                  seed: int) -> PublicSet:
    """``public`` followed by ``views`` augmented copies and ``mixes`` mixed examples per
    public example (unlabelled); ``public`` itself when both are 0."""
    import torch

    if views == 0 and mixes == 0:
        return public
    if modality not in ("image", "text"):
        raise ValueError(f"augmented views and mixes need image or text inputs, not "
                         f"{modality}")
    gen = torch.Generator().manual_seed(seed)
    x = images_as_float(public.x) if modality == "image" else public.x
    n = len(x)
    parts = [x]
    for _ in range(views):
        parts.append(_affine_views(x, gen) if modality == "image" else _text_views(x, gen))
    if mixes:
        m = mixes * n
        i = torch.randint(0, n, (m,), generator=gen)
        j = torch.randint(0, n, (m,), generator=gen)
        lam = torch.rand(m, generator=gen)
        if modality == "image":
            shape = (m,) + (1,) * (x.dim() - 1)
            parts.append(lam.view(shape) * x[i] + (1 - lam.view(shape)) * x[j])
        else:
            parts.append(_text_mixes(x, i, j, lam))
    extra = sum(len(p) for p in parts[1:])
    y = None
    if public.y is not None:
        y = torch.cat([public.y, torch.full((extra,), UNLABELLED, dtype=public.y.dtype)])
    return PublicSet(x=torch.cat(parts), y=y)
