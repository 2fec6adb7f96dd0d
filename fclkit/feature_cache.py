"""A content-addressed cache of backbone features, one entry per distinct input row.

A frozen backbone maps the same input to the same features, and an FCL run
passes the same data through the foundation model over and over: the server's
public set in every distillation epoch of every round, each client's task data
for the guidance term every round, every test split at every evaluation. The
cache keys each input row by a BLAKE2b digest of its bytes (plus dtype and
shape), so it needs no dataset ids and survives re-batching, shuffling and
indexing: only rows never seen before reach the backbone.

Pure Python; tensors come in and go out, but torch is imported lazily.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple


class CacheInfo(NamedTuple):
    """Like :func:`functools.lru_cache`'s: hits and misses count rows, not calls."""

    hits: int
    misses: int
    maxsize: int | None
    currsize: int
    enabled: bool


def row_keys(x: Any) -> list[bytes]:
    """One 16-byte BLAKE2b digest per row of ``x`` (a tensor or an array)."""
    import numpy as np

    if hasattr(x, "detach"):
        x = x.detach().cpu()
        arr = x.contiguous().numpy()
    else:
        arr = np.ascontiguousarray(x)
    header = hashlib.blake2b(f"{arr.dtype.str}{arr.shape[1:]}".encode(), digest_size=16)
    keys = []
    for row in arr.reshape(arr.shape[0], -1):
        h = header.copy()
        h.update(row.data)
        keys.append(h.digest())
    return keys


class FeatureCache:
    """Maps row digests to feature vectors (CPU tensors), least recently used out first."""

    def __init__(self, maxsize: int | None = None, enabled: bool = True) -> None:
        self.maxsize = maxsize if maxsize else None  # 0/None: unbounded
        self.enabled = enabled
        self._store: OrderedDict[bytes, Any] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def info(self) -> CacheInfo:
        return CacheInfo(self.hits, self.misses, self.maxsize, len(self._store), self.enabled)

    def clear(self) -> None:
        self._store.clear()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._store)

    def features(self, x: Any, compute: Callable[[Any], Any]) -> Any:
        """Features of every row of ``x``; ``compute(rows)`` runs only on rows not cached.

        ``compute`` gets a sub-batch of ``x`` (distinct, uncached rows, in order)
        and returns their features as a ``(n, ...)`` tensor. Returns a CPU tensor.
        """
        import torch

        if not self.enabled or len(x) == 0:
            return compute(x).detach().cpu()
        keys = row_keys(x)
        found: list[Any] = [None] * len(keys)
        missing: dict[bytes, list[int]] = {}
        for i, key in enumerate(keys):
            hit = self._store.get(key)
            if hit is not None:
                self._store.move_to_end(key)
                found[i] = hit
                self.hits += 1
            else:
                missing.setdefault(key, []).append(i)
        if missing:
            first = [rows[0] for rows in missing.values()]
            computed = compute(x[torch.as_tensor(first, device=x.device)]).detach().cpu()
            self.misses += len(first)
            self.hits += sum(len(rows) - 1 for rows in missing.values())  # repeats in-batch
            for (key, rows), feat in zip(missing.items(), computed, strict=True):
                feat = feat.clone()  # own storage: do not pin the whole batch in memory
                for i in rows:
                    found[i] = feat
                self._store[key] = feat
            if self.maxsize is not None:
                while len(self._store) > self.maxsize:
                    self._store.popitem(last=False)
        return torch.stack(found)
