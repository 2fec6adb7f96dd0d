"""A benchmark cut from one labelled pool: load (x, y), split it, stream it.

:class:`LabelledPoolBenchmark` does what every such benchmark shares: a fixed
stratified train/test split of the pool (``test_fraction`` of every class kept
for testing -- of every class in every domain in a domain-incremental run over a pool
with domains -- drawn under ``split_seed``, independent of the run's seed), then
:func:`fclkit.partition.federated_stream` cuts the training part into the run's
tasks (class- or domain-incremental, ``StreamSpec.scenario``) across clients. A
subclass only loads its pool (:meth:`LabelledPoolBenchmark.load_pool`); one that has
more options subclasses the shared ones::

    class MyBenchmark(LabelledPoolBenchmark):
        @attrs.frozen
        class Options(LabelledPoolBenchmark.Options):
            subset: int = setting(0, "examples kept per class (0: all)", int_at_least(0))

        def load_pool(self) -> LabelledPool: ...

Importing this module is light: numpy and torch load in :meth:`~LabelledPoolBenchmark.build`.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import attrs

from .config import float_in, int_at_least, setting
from .interfaces import Benchmark, StreamSpec
from .stream import FederatedStream, InputSpec


@attrs.frozen
class PoolOptions:
    """Options every labelled-pool benchmark has (subclasses add their own)."""

    test_fraction: float = setting(
        0.2, "fraction of each class kept as the test split",
        float_in(0.0, 1.0, low_open=True, high_open=True))
    split_seed: int = setting(
        0, "seed of the fixed train/test split (independent of the run's seed)",
        int_at_least(0))


@attrs.frozen(eq=False)
class LabelledPool:
    """A whole labelled data set, before any split: what :meth:`load_pool` returns."""

    #: every example, ``(n, *input_spec.shape)`` (a tensor, or anything ``torch.as_tensor`` takes)
    x: Any
    #: the ``n`` integer labels ``0..C-1`` (array-like)
    y: Any
    input_spec: InputSpec
    class_names: Sequence[str] = ()
    #: the domain id (``0..D-1``, in task order) of every example, when the data has
    #: domains of its own (e.g. a domain column); None: domains are generated when a run
    #: asks for them (rotated or permuted images)
    domains: Any = None
    #: the name of each domain id
    domain_names: Sequence[str] = ()


class LabelledPoolBenchmark(Benchmark):
    """Base class: subclasses implement :meth:`load_pool`; :meth:`build` is shared."""

    Options = PoolOptions

    @abstractmethod
    def load_pool(self) -> LabelledPool:
        """The whole pool, the same on every call (no split, no shuffling).

        Raise :class:`fclkit.errors.BenchmarkUnavailableError` (at once) when the
        data cannot be obtained.
        """

    def build(self, spec: StreamSpec) -> FederatedStream:
        import numpy as np

        from .partition import federated_stream, split_public

        pool = self.load_pool()
        x = pool.x
        y = np.asarray(pool.y, dtype=np.int64)
        if len(x) != len(y):
            raise ValueError(f"benchmark {self.name!r}: {len(x)} examples but {len(y)} labels")
        own_domains = spec.scenario == "domain" and pool.domains is not None
        d = np.asarray(pool.domains, dtype=np.int64) if own_domains else None
        if d is not None and (d < 0).any():  # examples of domains left out of the run
            keep = np.flatnonzero(d >= 0)
            x, y, d = x[keep], y[keep], d[keep]
            missing = sorted(set(range(len(pool.class_names) or int(y.max()) + 1))
                             - set(y.tolist()))
            if missing:
                from .errors import ConfigError

                raise ConfigError("benchmark_options.domain_order", ",".join(
                    map(str, pool.domain_names)), "the domains kept hold no example of class "
                    + ", ".join(repr(str(pool.class_names[c]) if pool.class_names else c)
                                for c in missing[:5]), hint="keep more domains")
        strata = y if d is None else d * (int(y.max()) + 1 if len(y) else 1) + y
        train, test = split_public(strata, self.options.test_fraction,
                                   np.random.default_rng(self.options.split_seed))
        return federated_stream(
            x[train], y[train], x[test], y[test], spec,
            input_spec=pool.input_spec, class_names=tuple(pool.class_names),
            domains=None if d is None else (d[train], d[test]),
            domain_names=tuple(pool.domain_names))
