"""How fclkit drives a real Avalanche strategy, round by round (imports torch and Avalanche).

Only imported when a strategy is built, so ``import fclkit_builtins.avalanche`` stays light.

Rounds and tasks
================

One fclkit *task* is one Avalanche *experience* (``current_experience`` = the
task index, ``classes_in_this_experience`` = the task's classes, task label 0:
a single-head class-incremental setting). A task is trained over
``round_info.rounds_per_task`` federated rounds; between them the client may
load new weights (e.g. FedAvg) into the same module. Each round is one call of
the Avalanche template's own ``train(experience)``; the template is a
:class:`RoundControlMixin` subclass of the Avalanche strategy class, which gates
the two experience-boundary phases:

* ``before_training_exp`` (first round of a task, i.e. ``round == 0`` or a task
  that is not the open one): the template's full set-up, exactly as Avalanche.
  On the task's later rounds the template still rebuilds what is per call (the
  adapted dataset, the data loader, the model/optimizer check) but the plugins'
  ``before_training_exp`` callbacks run only for plugins that merely (re)build
  per-call objects (Avalanche's ``ReplayPlugin`` and any plugin whose class sets
  ``fclkit_repeat_before_training_exp = True``); per-experience snapshots such as
  Synaptic Intelligence's start-of-task weights are taken once per task.
* ``after_training_exp`` (consolidation: EWC importances, LwF's previous model,
  replay/GEM/A-GEM memories, SI/MAS importances, the clock's experience counter)
  runs at the task's last round only (``round_info.is_last_round``).

``before_training``/``after_training`` fire every round (each round is one
``train`` call). With ``rounds_per_task == 1`` a round therefore is *exactly*
``avalanche_strategy.train(experience)``.

Extra losses: :class:`ExtraLossPlugin` (first in the plugin list) adds each
``term(x, y, logits)`` to the loss on ``before_backward`` of every training
mini-batch, i.e. of the mini-batch the strategy trains on (for ``replay`` and
``der`` that includes the memory examples mixed into it). The round's
:class:`~fclkit.interfaces.TrainReport` has the task's number of training
examples, the mean of the full objective over mini-batches and the number of
optimizer steps.

Randomness: nothing here seeds. Every random draw comes from torch's global
RNG, which the caller seeds before each round, and random streams never carry
over between rounds: samplers (A-GEM's memory sampler, DER's replay loader, the
data loaders) are restarted at each round, and A-GEM's memory selection uses
torch instead of Python's ``random``. So a strategy restored from its state
draws the same numbers as an uninterrupted one.

The plugin shims live in :mod:`fclkit_builtins.avalanche.avalanche_plugins`, the
strategy state in :mod:`fclkit_builtins.avalanche.state_codec`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from . import lazy_import  # noqa: F401  (first: Avalanche imported lazily)

# isort: split
from avalanche.benchmarks.scenarios.dataset_scenario import DatasetExperience
from avalanche.benchmarks.scenarios.task_aware import with_task_labels
from avalanche.benchmarks.utils.classification_dataset import (
    _make_taskaware_tensor_classification_dataset,
)
from avalanche.training.plugins.evaluation import EvaluationPlugin
from avalanche.training.plugins.replay import ReplayPlugin

from fclkit.errors import ConfigError, FclkitError
from fclkit.interfaces import TrainReport

from .avalanche_plugins import (
    ExtraLossPlugin,
    GradClipPlugin,
    RoundRecorder,
    _without_avalanche_deprecations,
    _WithoutCallback,
)
from .state_codec import (
    STATE_FORMAT,
    _load_optimizer_state,
    _load_plugin_state,
    _load_template_state,
    _optimizer_state,
    _plugin_state,
    _template_state,
)

# =============================================================== template control


def repeats_setup_each_round(plugin: Any) -> bool:
    """Whether ``plugin.before_training_exp`` runs on every round of a task (not only the first)."""
    return isinstance(plugin, ReplayPlugin) or bool(
        getattr(plugin, "fclkit_repeat_before_training_exp", False))


class RoundControlMixin:
    """Put before an Avalanche template class to split an experience over rounds.

    ``_fcl_opening``: this call starts the experience (full ``before_training_exp``).
    ``_fcl_closing``: this call ends it (``after_training_exp`` consolidates).
    Both default to True, so ``train(exp)`` alone behaves exactly as Avalanche's.
    """

    _fcl_opening: bool = True
    _fcl_closing: bool = True

    def _before_training_exp(self, **kwargs):
        if self._fcl_opening:
            return super()._before_training_exp(**kwargs)
        plugins = self.plugins
        self.plugins = [p if repeats_setup_each_round(p)
                        else _WithoutCallback(p, "before_training_exp") for p in plugins]
        try:
            return super()._before_training_exp(**kwargs)
        finally:
            self.plugins = plugins

    def _after_training_exp(self, **kwargs):
        if self._fcl_closing:
            return super()._after_training_exp(**kwargs)
        return None


_ROUND_CONTROLLED: dict[type, type] = {}


def round_controlled(template: type) -> type:
    """The :class:`RoundControlMixin` subclass of an Avalanche template class."""
    if template not in _ROUND_CONTROLLED:
        _ROUND_CONTROLLED[template] = type(
            f"RoundControlled{template.__name__}", (RoundControlMixin, template),
            {"__module__": __name__})
    return _ROUND_CONTROLLED[template]

# ===================================================================== the driver


def make_optimizer(model: torch.nn.Module, context: Any) -> torch.optim.Optimizer:
    params = list(model.parameters())
    if context.optimizer == "sgd":
        return torch.optim.SGD(params, lr=context.lr, momentum=context.momentum,
                               weight_decay=context.weight_decay)
    if context.optimizer == "adam":
        return torch.optim.Adam(params, lr=context.lr, weight_decay=context.weight_decay)
    raise ConfigError("optimizer", context.optimizer, "must be one of: sgd, adam")


def make_experience(task: Any) -> DatasetExperience:
    """An Avalanche experience for one fclkit task (single head, task label 0)."""
    dataset = _make_taskaware_tensor_classification_dataset(
        task.x_train, task.y_train.long(), task_labels=0)
    exp = with_task_labels(DatasetExperience(dataset=dataset, current_experience=task.task_id))
    exp.classes_in_this_experience = [int(c) for c in task.classes]
    return exp


class RoundDriver:
    """Owns the Avalanche strategy of one :class:`~.strategies.AvalancheStrategy`."""

    def __init__(self, owner: Any, extra_plugins: Sequence[Any] = ()) -> None:
        context = owner.context
        model = owner.model
        self.device = torch.device(context.device)
        model.to(self.device)
        self.optimizer = make_optimizer(model, context)
        template, kwargs = owner.avalanche_template()
        self.extra_loss = ExtraLossPlugin()
        self.recorder = RoundRecorder()
        plugins = [self.extra_loss, self.recorder, *extra_plugins, *owner.method_plugins()]
        if context.grad_clip > 0:
            plugins.append(GradClipPlugin(context.grad_clip))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "No loggers specified": silence is intended
            evaluator = EvaluationPlugin(loggers=[])
        self.strategy = round_controlled(template)(
            model=model, optimizer=self.optimizer, criterion=torch.nn.CrossEntropyLoss(),
            train_mb_size=context.batch_size, train_epochs=1, eval_mb_size=context.batch_size,
            device=self.device, plugins=plugins, evaluator=evaluator, eval_every=-1, **kwargs)
        self.model = model
        if self.strategy.model is not model:  # pragma: no cover - Avalanche contract
            raise FclkitError("the Avalanche strategy does not train the client's model in place")
        self.open_task: int | None = None
        self._cached: tuple[Any, DatasetExperience] | None = None

    def _experience(self, task: Any) -> DatasetExperience:
        if self._cached is None or self._cached[0] is not task:
            self._cached = (task, make_experience(task))
        return self._cached[1]

    def train_round(self, task: Any, *, round_info: Any, epochs: int,
                    extra_losses: Sequence[Callable] = ()) -> TrainReport:
        strategy = self.strategy
        task_id = int(task.task_id)
        opening = round_info.round == 0 or self.open_task != task_id
        if opening and self.open_task is not None and self.open_task != task_id:
            warnings.warn(f"task {self.open_task} ended before its last round: what it learnt "
                          "was not consolidated", RuntimeWarning, stacklevel=3)
        experience = self._experience(task)
        strategy._fcl_opening = opening
        strategy._fcl_closing = round_info.is_last_round
        strategy.train_epochs = int(epochs)
        self.extra_loss.terms = tuple(extra_losses)
        self.recorder.reset()
        try:
            with _without_avalanche_deprecations():
                strategy.train(experience, eval_streams=[])
        finally:
            self.extra_loss.terms = ()
            strategy._fcl_opening = strategy._fcl_closing = True
        if strategy.model is not self.model:  # e.g. a plugin swapped in another module
            raise FclkitError(f"{type(strategy).__name__} replaced the client's model object; "
                              "fclkit strategies must train their model in place")
        self.open_task = None if round_info.is_last_round else task_id
        return TrainReport(num_examples=task.num_train, loss=self.recorder.mean_loss,
                           steps=self.recorder.steps)

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        strategy = self.strategy
        return {
            "format": STATE_FORMAT,
            "open_task": self.open_task,
            "optimizer": _optimizer_state(strategy),
            "template": _template_state(strategy),
            "plugins": [{"type": type(p).__name__, "state": _plugin_state(p, self)}
                        for p in strategy.plugins],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        strategy = self.strategy
        if state.get("format") != STATE_FORMAT:
            raise FclkitError(f"unsupported Avalanche strategy state format "
                              f"{state.get('format')!r} (expected {STATE_FORMAT})")
        entries = list(state["plugins"])
        types = [type(p).__name__ for p in strategy.plugins]
        if [e["type"] for e in entries] != types:
            raise FclkitError(
                "the saved strategy state does not match this strategy's plugins: saved "
                f"{[e['type'] for e in entries]}, here {types}",
                hint="build the strategy with the same options and extra plugins as the saved one")
        self.open_task = state["open_task"]
        _load_template_state(strategy, state["template"])
        for plugin, entry in zip(strategy.plugins, entries, strict=True):
            _load_plugin_state(plugin, entry["state"], self)
        _load_optimizer_state(strategy, state["optimizer"])
        self._cached = None
