"""Avalanche plugin shims used by the round driver (imports torch and Avalanche).

Only imported when a strategy is built, so ``import fclkit_builtins.avalanche`` stays light.

Two Avalanche 0.6 plugins are used through small subclasses: :class:`SIPlugin`
(Synaptic Intelligence's weight snapshots are views of the parameters on the
CPU, so SI silently did nothing there) and :class:`AGEMPlugin` (torch RNG, see
the randomness notes in :mod:`fclkit_builtins.avalanche.round_driver`).
Everything else is Avalanche's code unchanged.

Also here: :class:`ExtraLossPlugin` (fclkit's extra losses), :class:`GradClipPlugin`,
:class:`RoundRecorder` (a round's mean loss and optimizer steps), the
:class:`_WithoutCallback` view the driver uses to skip a plugin's callback and
the filter for Avalanche's internal deprecation notices.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch

from . import lazy_import  # noqa: F401  (first: Avalanche imported lazily)

# isort: split
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins.agem import AGEMPlugin as _AvalancheAGEMPlugin
from avalanche.training.plugins.synaptic_intelligence import SynapticIntelligencePlugin
from avalanche.training.utils import ParamData

# ================================================================== plugin views


class _WithoutCallback:
    """A view of a plugin without one callback (``hasattr`` is False for it)."""

    __slots__ = ("_plugin", "_hidden")

    def __init__(self, plugin: Any, hidden: str) -> None:
        self._plugin = plugin
        self._hidden = hidden

    @property
    def __class__(self):  # isinstance() checks by other plugins still see the plugin's type
        return type(self._plugin)

    def __getattr__(self, name: str) -> Any:
        if name == self._hidden:
            raise AttributeError(name)
        return getattr(self._plugin, name)


# ======================================================================== plugins


class ExtraLossPlugin(SupervisedPlugin):
    """Adds each ``term(x, y, logits)`` to the loss of every training mini-batch."""

    def __init__(self) -> None:
        super().__init__()
        self.terms: tuple[Callable, ...] = ()

    def before_backward(self, strategy, **kwargs):
        for term in self.terms:
            strategy.loss = strategy.loss + term(strategy.mb_x, strategy.mb_y,
                                                 strategy.mb_output)


class GradClipPlugin(SupervisedPlugin):
    """Clips the gradient's global norm before every optimizer step (``grad_clip``)."""

    def __init__(self, max_norm: float) -> None:
        super().__init__()
        self.max_norm = float(max_norm)

    def before_update(self, strategy, **kwargs):
        torch.nn.utils.clip_grad_norm_(strategy.model.parameters(), self.max_norm)


class RoundRecorder(SupervisedPlugin):
    """Mean training loss (the full objective) and optimizer steps of a round."""

    def __init__(self) -> None:
        super().__init__()
        self.reset()

    def reset(self) -> None:
        self.loss_sum = 0.0
        self.batches = 0
        self.steps = 0

    def after_update(self, strategy, **kwargs):
        self.steps += 1

    def after_training_iteration(self, strategy, **kwargs):
        self.loss_sum += float(strategy.loss.detach().sum())
        self.batches += 1

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / self.batches if self.batches else float("nan")


class AGEMPlugin(_AvalancheAGEMPlugin):
    """Avalanche's A-GEM with restorable randomness.

    * the memory sampler restarts at each round (its stream then depends only on
      the caller-seeded torch RNG, not on how many rounds this object lived);
    * a task's memory is chosen with ``torch.randperm`` instead of Python's
      ``random.shuffle``; Avalanche's own ``update_memory`` does the rest.
    """

    fclkit_repeat_before_training_exp = True

    def before_training_exp(self, strategy, **kwargs):
        if self.buffer_dataloader is not None:
            self.buffer_dliter = iter(self.buffer_dataloader)

    def update_memory(self, dataset, num_workers=0, **kwargs):
        if len(dataset) > self.patterns_per_experience:
            keep = torch.randperm(len(dataset))[: self.patterns_per_experience]
            dataset = dataset.subset(keep.tolist())
        super().update_memory(dataset, num_workers=num_workers, **kwargs)


def _copy_param_data(params: Mapping[str, ParamData]) -> None:
    for pd in params.values():
        pd.data = pd.data.clone()


class SIPlugin(SynapticIntelligencePlugin):
    """Avalanche's Synaptic Intelligence, fixed for models on the CPU.

    Avalanche 0.6 takes its weight snapshots with ``param.detach().cpu().flatten()``,
    which on the CPU is a *view* of the parameter, not a copy: the start-of-task
    anchor and the pre-step weights then move with the model, the path integral
    is always 0 and SI does nothing. The snapshots are copied right after
    Avalanche takes them (a no-op difference on GPUs, where ``.cpu()`` copies).
    """

    def before_training_exp(self, strategy, **kwargs):
        super().before_training_exp(strategy, **kwargs)
        _copy_param_data(self.ewc_data[0])

    def before_training_iteration(self, strategy, **kwargs):
        super().before_training_iteration(strategy, **kwargs)
        _copy_param_data(self.syn_data["old_theta"])


# ========================================================= deprecation filter


@contextlib.contextmanager
def _without_avalanche_deprecations():
    """Drop Avalanche's internal deprecation notices (e.g. ReplayPlugin calling its own
    deprecated ``storage_policy.update``); re-issue every other warning.

    Filters cannot do it: Avalanche's ``deprecated`` decorator installs its own
    ``simplefilter("once", DeprecationWarning)`` on every call.
    """
    with warnings.catch_warnings(record=True) as caught:
        yield
    for w in caught:
        if not issubclass(w.category, DeprecationWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
