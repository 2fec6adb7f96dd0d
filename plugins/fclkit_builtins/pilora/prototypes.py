"""Prototype learning with a distance-based classifier, and the server's prototype
re-weighting (PILoRA, Guo et al., ECCV 2024).

Each class c has a prototype p_c in the backbone's feature space. A feature f is
classified by its distance to every prototype,

    dist(f, p_c) = sqrt( ||f - p_c||^2 / D )          (D: the feature width)

trained with the distance-based cross-entropy ``CE(-dist / T, y)`` plus the prototype
loss ``dist(f, p_y)`` (it pulls features to their class's prototype).

The prototypes live in the foundation model's linear head: row c of ``head.weight``
is p_c and ``head.bias[c] = -||p_c||^2 / 2``, so the head's logit

    f . p_c - ||p_c||^2 / 2  =  -( ||f - p_c||^2 - ||f||^2 ) / 2

ranks the classes exactly as the nearest prototype does (``||f||^2`` is the same for
every class), and every evaluation of the FM part is the distance-based classifier.
"""

from __future__ import annotations

from typing import Any

#: squared distances are clamped to this before the square root (its gradient is finite)
EPS = 1e-12


def distances(features: Any, prototypes: Any) -> Any:
    """``(n, C)``: dist(f_i, p_c) = sqrt(mean over coordinates of (f_i - p_c)^2)."""
    diff = features.unsqueeze(1) - prototypes.unsqueeze(0)
    return diff.pow(2).mean(-1).clamp_min(EPS).sqrt()


def dce_loss(dist: Any, target: Any, temperature: float, prototype_weight: float
             ) -> tuple[Any, Any, Any]:
    """(total, distance-based CE, prototype loss) for distances ``(n, C)`` and targets
    given as column positions."""
    import torch
    import torch.nn.functional as F

    ce = F.cross_entropy(-dist / temperature, target)
    pl = dist.gather(1, target.unsqueeze(1)).mean() if len(target) else torch.zeros(())
    return ce + prototype_weight * pl, ce, pl


def head_bias(prototypes: Any) -> Any:
    """The linear head's bias that makes it the nearest-prototype classifier."""
    return -0.5 * prototypes.pow(2).sum(-1)


def reweight(prototypes: Any, feature_means: Any, temperature: float) -> Any:
    """Weights ``(K,)`` of K clients' prototypes of one class, from the feature means
    ``(J, D)`` of that class uploaded by the J clients that hold examples of it:

        d_k = sum_j ||p_k - mu_j||_2          (how far prototype k is from the data)
        s_k = 1 / d_k
        s^_k = (s_k - min s) / (max s - min s)    (all 0 when every s_k is the same)
        w = softmax(s^ / temperature)

    A prototype nearer the clients' features gets more weight (the heuristic bias of
    prototypes learnt on skewed local data is down-weighted).
    """
    import torch

    p = prototypes.to(torch.float64)
    m = feature_means.to(torch.float64)
    d = (p.unsqueeze(1) - m.unsqueeze(0)).pow(2).sum(-1).sqrt().sum(1)
    s = 1.0 / d.clamp_min(EPS)
    span = s.max() - s.min()
    s_hat = (s - s.min()) / span if bool(span > 0) else torch.zeros_like(s)
    return torch.softmax(s_hat / temperature, dim=0)
