"""Built-in benchmark ``digits``: scikit-learn's bundled 8x8 handwritten digits.

1,797 real images of 10 classes that ship inside scikit-learn, so the benchmark
runs offline. A fixed stratified split (independent of the run's seed) keeps
``test_fraction`` of every class for testing; the rest is cut into
class-incremental tasks across clients by :mod:`fclkit.partition`. The code is
in :mod:`fclkit_builtins.digits.benchmark`.

Importing this package is light (no torch, no scikit-learn).
"""

from __future__ import annotations

import fclkit


@fclkit.hookimpl
def register_benchmarks(register):
    from .benchmark import DigitsBenchmark

    register(DigitsBenchmark)
