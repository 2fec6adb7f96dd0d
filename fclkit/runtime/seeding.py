"""Deterministic seeds derived from the run's seed and where we are in the run."""

from __future__ import annotations

import random
import zlib


def derive_seed(seed: int, *parts: object) -> int:
    """A 32-bit seed that depends only on ``seed`` and ``parts`` (stable across processes)."""
    import numpy as np  # imported here: the runtime package loads with `fclkit plugins`

    words = [seed] + [zlib.crc32(str(p).encode()) for p in parts]
    return int(np.random.SeedSequence(words).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
