"""Built-in benchmark ``digits``: scikit-learn's bundled 8x8 handwritten digits.

1,797 real images of 10 classes that ship inside scikit-learn, so the benchmark
runs offline. A fixed stratified split (independent of the run's seed) keeps
``test_fraction`` of every class for testing; the rest is cut into
class-incremental tasks across clients by :mod:`fclkit.partition`.
"""

from __future__ import annotations

from typing import Any

import attrs

import fclkit
from fclkit.config import float_in, setting
from fclkit.interfaces import Benchmark, StreamSpec
from fclkit.stream import FederatedStream, InputSpec


class DigitsBenchmark(Benchmark):
    name = "digits"
    description = "scikit-learn's 8x8 digits (1,797 real images, 10 classes), offline"
    default_foundation_model = "efficientnet-lite"
    default_client_model = "mlp"

    @attrs.frozen
    class Options:
        test_fraction: float = setting(
            0.2, "fraction of each class kept as the test split",
            float_in(0.0, 1.0, low_open=True, high_open=True))
        split_seed: int = setting(
            0, "seed of the fixed train/test split (independent of the run's seed)")

    def build(self, spec: StreamSpec) -> FederatedStream:
        import numpy as np
        import torch

        from fclkit.partition import class_incremental_stream, split_public

        images, target = load_digits()
        x = torch.tensor(images, dtype=torch.float32).unsqueeze(1) / 16.0
        y = np.asarray(target, dtype=np.int64)
        train, test = split_public(y, self.options.test_fraction,
                                   np.random.default_rng(self.options.split_seed))
        return class_incremental_stream(
            x[train], y[train], x[test], y[test], spec,
            input_spec=InputSpec("image", (1, 8, 8)),
            class_names=tuple(str(c) for c in range(10)))


def load_digits() -> tuple[Any, Any]:
    """scikit-learn's digits as (images (1797, 8, 8), labels): the CSV file that ships in
    scikit-learn, read directly (importing ``sklearn.datasets`` costs about 1 s); falls
    back to ``sklearn.datasets.load_digits`` if the file is not where it used to be."""
    import importlib.util
    from pathlib import Path

    import numpy as np

    spec = importlib.util.find_spec("sklearn")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.exists():
            table = np.loadtxt(path, delimiter=",")
            return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits as sklearn_load_digits

    data = sklearn_load_digits()
    return data.images, data.target


def digits_tasks(groups: tuple[tuple[int, ...], ...], train_fraction: float = 0.8,
                 seed: int = 0) -> list[Any]:
    """One learner's task sequence on digits, without clients: task ``t`` holds the classes
    ``groups[t]``, from one random train/test cut (for strategy tests and benchmarks)."""
    import numpy as np
    import torch

    from fclkit.stream import TaskData

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


@fclkit.hookimpl
def register_benchmarks(register):
    register(DigitsBenchmark)
