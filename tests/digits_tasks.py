"""Test helper: one learner's class-incremental task sequence on scikit-learn's digits.

Not a test module (pytest collects only ``test_*.py``). ``tests/`` is not a package,
so pytest puts this folder on ``sys.path`` and tests import it as
``from digits_tasks import digits_tasks``; scripts under ``benchmarks/`` add the
folder to ``sys.path`` themselves.
"""

from __future__ import annotations

from typing import Any


def digits_tasks(groups: tuple[tuple[int, ...], ...], train_fraction: float = 0.8,
                 seed: int = 0) -> list[Any]:
    """One learner's task sequence on digits, without clients: task ``t`` holds the classes
    ``groups[t]``, from one random train/test cut (for strategy tests and benchmarks)."""
    import numpy as np
    import torch

    from fclkit.stream import TaskData
    from fclkit_builtins.digits.benchmark import load_digits

    images, target = load_digits()
    x = torch.tensor(images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(target, dtype=torch.long)
    perm = np.random.default_rng(seed).permutation(len(y))
    cut = int(train_fraction * len(y))
    train, test = perm[:cut], perm[cut:]
    tasks = []
    for t, classes in enumerate(groups):
        tr = train[np.isin(target[train], classes)]
        te = test[np.isin(target[test], classes)]
        tasks.append(TaskData(t, classes, x[tr], y[tr], x[te], y[te]))
    return tasks
