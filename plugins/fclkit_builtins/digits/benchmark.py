"""The ``digits`` benchmark: scikit-learn's bundled 8x8 handwritten digits, and their loader.

The shared split and stream live in :class:`fclkit.pool.LabelledPoolBenchmark`;
this module only loads the pool. Importing it is light (numpy and torch load
when the benchmark is built).
"""

from __future__ import annotations

from typing import Any

from fclkit.pool import LabelledPool, LabelledPoolBenchmark
from fclkit.stream import InputSpec


class DigitsBenchmark(LabelledPoolBenchmark):
    name = "digits"
    description = "scikit-learn's 8x8 digits (1,797 real images, 10 classes), offline"
    default_foundation_model = "efficientnet-lite"
    default_client_model = "mlp"

    def load_pool(self) -> LabelledPool:
        import torch

        images, target = load_digits()
        x = torch.tensor(images, dtype=torch.float32).unsqueeze(1) / 16.0
        return LabelledPool(x, target, InputSpec("image", (1, 8, 8)),
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
