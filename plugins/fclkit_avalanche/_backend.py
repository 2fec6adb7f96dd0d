"""How fclkit drives a real Avalanche strategy, round by round (imports torch and Avalanche).

Only imported when a strategy is built, so ``import fclkit_avalanche`` stays light.

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

Two Avalanche 0.6 plugins are used through small subclasses: :class:`SIPlugin`
(Synaptic Intelligence's weight snapshots are views of the parameters on the
CPU, so SI silently did nothing there) and :class:`AGEMPlugin` (torch RNG, see
above). Everything else is Avalanche's code unchanged.

State
=====

:meth:`RoundDriver.state_dict` is a nested dict of tensors and JSON values:
the open task, the optimizer's per-parameter state (momentum / Adam moments,
keyed by parameter name; Avalanche keeps it across experiences), the
template's own state (DER's memory) and one entry per plugin, in plugin order:
the clock's counters, EWC importances and anchor weights, LwF's previous model
(as a state dict) and previous classes, replay buffers (examples, targets,
task labels, reservoir weights, group layout), SI and MAS accumulators, GEM
and A-GEM memories. Extra plugins may take part by defining ``state_dict()``
and ``load_state_dict(state)``. The small model's own weights are not included.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from avalanche.benchmarks import DatasetExperience, with_task_labels
from avalanche.benchmarks.utils import (
    TensorDataAttribute,
    _make_taskaware_tensor_classification_dataset,
    make_avalanche_dataset,
)
from avalanche.benchmarks.utils.flat_data import FlatData
from avalanche.benchmarks.utils.utils import concat_datasets
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import (
    AGEMPlugin as _AvalancheAGEMPlugin,
)
from avalanche.training.plugins import (
    EvaluationPlugin,
    EWCPlugin,
    GEMPlugin,
    LwFPlugin,
    MASPlugin,
    ReplayPlugin,
    SynapticIntelligencePlugin,
)
from avalanche.training.plugins.clock import Clock
from avalanche.training.storage_policy import BalancedExemplarsBuffer, ReservoirSamplingBuffer
from avalanche.training.supervised.der import DER
from avalanche.training.utils import ParamData

from fclkit.errors import ConfigError, FclkitError
from fclkit.interfaces import TrainReport

STATE_FORMAT = 1

# =============================================================== template control


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


# ===================================================================== the driver


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


# ================================================================ state helpers


def _t(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().clone()


def _on(tensor: torch.Tensor, device: Any) -> torch.Tensor:
    return tensor.detach().clone().to(device)


def _pd_state(pd: ParamData) -> dict[str, Any]:
    return {"name": pd.name, "data": _t(pd.data)}


def _pd_load(state: Mapping[str, Any], device: Any) -> ParamData:
    data = _on(state["data"], device)
    return ParamData(state["name"], init_tensor=data, device=data.device)


def _pd_dict_state(params: Mapping[str, ParamData] | None) -> dict[str, Any] | None:
    if params is None:
        return None
    return {name: _pd_state(pd) for name, pd in params.items()}


def _pd_dict_load(state: Mapping[str, Any] | None, device: Any) -> dict[str, ParamData] | None:
    if state is None:
        return None
    return {name: _pd_load(pd, device) for name, pd in state.items()}


def _int_keyed(state: Mapping[str, Any], load: Callable[[Any], Any]) -> dict[int, Any]:
    return {int(k): load(v) for k, v in state.items()}


# ------------------------------------------------------------------ datasets


def dataset_state(dataset: Any) -> dict[str, Any]:
    """The examples of a (small) Avalanche classification dataset as tensors."""
    n = len(dataset)
    if n == 0:
        return {"size": 0}
    items = [dataset[i] for i in range(n)]
    out = {"size": n,
           "x": torch.stack([torch.as_tensor(it[0]) for it in items]),
           "y": torch.tensor([int(it[1]) for it in items], dtype=torch.long),
           "t": torch.tensor([int(it[2]) for it in items], dtype=torch.long)}
    if len(items[0]) > 3:  # DER's memory: (x, y, t, logits)
        out["logits"] = torch.stack([torch.as_tensor(it[3]) for it in items])
    return out


def dataset_from_state(state: Mapping[str, Any]) -> Any:
    """Inverse of :func:`dataset_state` (yields the same items, in the same order)."""
    if int(state["size"]) == 0:
        return concat_datasets([])
    labels = [int(t) for t in state["t"]]
    # one task label -> a constant attribute, as the experiences' own datasets have
    # (Avalanche cannot concatenate a constant task-label attribute with a listed one)
    data = _make_taskaware_tensor_classification_dataset(
        _t(state["x"]), _t(state["y"]).long(),
        task_labels=labels[0] if len(set(labels)) == 1 else labels)
    if "logits" in state:
        rows = [_t(row) for row in state["logits"]]
        data = make_avalanche_dataset(data, data_attributes=[TensorDataAttribute(
            FlatData([rows], discard_elements_not_in_indices=True), name="logits",
            use_in_getitem=True)])
    return data


def storage_state(policy: Any) -> dict[str, Any]:
    """A replay storage policy (reservoir or balanced groups of reservoirs) as tensors."""
    if isinstance(policy, ReservoirSamplingBuffer):
        return {"kind": "reservoir", "max_size": int(policy.max_size),
                "weights": _t(policy._buffer_weights), "data": dataset_state(policy.buffer)}
    if isinstance(policy, BalancedExemplarsBuffer):
        out: dict[str, Any] = {
            "kind": "balanced", "max_size": int(policy.max_size),
            "groups": [[int(k), storage_state(g)] for k, g in policy.buffer_groups.items()]}
        if hasattr(policy, "_num_exps"):
            out["num_exps"] = int(policy._num_exps)
        if hasattr(policy, "seen_classes"):
            out["seen_classes"] = [int(c) for c in policy.seen_classes]  # iteration order
        return out
    raise FclkitError(f"cannot save the replay storage policy {type(policy).__name__}")


def load_storage(policy: Any, state: Mapping[str, Any]) -> None:
    policy.max_size = int(state["max_size"])
    if state["kind"] == "reservoir":
        policy.buffer = dataset_from_state(state["data"])
        policy._buffer_weights = _t(state["weights"])
        return
    groups = {}
    for key, group_state in state["groups"]:
        group = ReservoirSamplingBuffer(int(group_state["max_size"]))
        load_storage(group, group_state)
        groups[int(key)] = group
    policy.buffer_groups = groups
    if "num_exps" in state:
        policy._num_exps = int(state["num_exps"])
    if "seen_classes" in state:
        seen: set[int] = set()
        for c in state["seen_classes"]:
            seen.add(int(c))
        policy.seen_classes = seen


# ------------------------------------------------------------------ optimizer


def _optimizer_params(optimizer: torch.optim.Optimizer) -> list[torch.nn.Parameter]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def _optimizer_state(strategy: Any) -> dict[str, Any]:
    names = {id(p): n for n, p in strategy.model.named_parameters()}
    per_param: dict[str, Any] = {}
    for p, entry in strategy.optimizer.state.items():
        if id(p) in names and entry:
            per_param[names[id(p)]] = {
                k: _t(v) if isinstance(v, torch.Tensor) else v for k, v in entry.items()}
    return {"ready": strategy.optimized_param_id is not None, "state": per_param}


def _load_optimizer_state(strategy: Any, state: Mapping[str, Any]) -> None:
    params = dict(strategy.model.named_parameters())
    if state["ready"]:
        # what Avalanche's first make_optimizer() records; without it the next
        # experience would reset the optimizer state loaded below
        strategy.optimized_param_id = dict(params)
    index = {id(p): i for i, p in enumerate(_optimizer_params(strategy.optimizer))}
    current = strategy.optimizer.state_dict()
    current["state"] = {index[id(params[name])]: {
        k: _t(v) if isinstance(v, torch.Tensor) else v for k, v in entry.items()}
        for name, entry in state["state"].items()}
    strategy.optimizer.load_state_dict(current)


# ------------------------------------------------------------------ template


def _template_state(strategy: Any) -> dict[str, Any]:
    if isinstance(strategy, DER):
        return {"storage": storage_state(strategy.storage_policy)}
    return {}


def _load_template_state(strategy: Any, state: Mapping[str, Any]) -> None:
    if isinstance(strategy, DER):
        load_storage(strategy.storage_policy, state["storage"])
        strategy.replay_loader = None


# ------------------------------------------------------------------ plugins

_CLOCK_FIELDS = ("train_iterations", "train_exp_counter", "train_exp_epochs",
                 "train_exp_iterations", "train_epoch_iterations", "total_iterations")
_SI_SYN_FIELDS = ("old_theta", "new_theta", "grad", "trajectory", "cum_trajectory")


def _plugin_state(plugin: Any, driver: RoundDriver) -> Any:
    if isinstance(plugin, Clock):
        return {f: int(getattr(plugin, f)) for f in _CLOCK_FIELDS}
    if isinstance(plugin, EWCPlugin):
        return {"saved_params": {str(k): _pd_dict_state(v)
                                 for k, v in plugin.saved_params.items()},
                "importances": {str(k): _pd_dict_state(v)
                                for k, v in plugin.importances.items()}}
    if isinstance(plugin, LwFPlugin):
        lwf = plugin.lwf
        prev = lwf.prev_model
        return {"expcount": int(lwf.expcount),
                "prev_classes": {str(k): [int(c) for c in v]  # iteration order
                                 for k, v in lwf.prev_classes_by_task.items()},
                "prev_model": None if prev is None else {
                    k: _t(v) for k, v in prev.state_dict().items()},
                "prev_model_modes": None if prev is None else [
                    bool(m.training) for m in prev.modules()]}
    if isinstance(plugin, ReplayPlugin):
        return {"storage": storage_state(plugin.storage_policy)}
    if isinstance(plugin, SynapticIntelligencePlugin):
        return {"ewc_data": [_pd_dict_state(d) for d in plugin.ewc_data],
                "syn_data": {k: _pd_dict_state(plugin.syn_data[k]) for k in _SI_SYN_FIELDS}}
    if isinstance(plugin, MASPlugin):
        return {"params": _pd_dict_state(plugin.params),
                "importance": _pd_dict_state(plugin.importance)}
    if isinstance(plugin, _AvalancheAGEMPlugin):
        return {"buffers": [dataset_state(b) for b in plugin.buffers]}
    if isinstance(plugin, GEMPlugin):
        return {f: {str(k): _t(v) for k, v in getattr(plugin, f).items()}
                for f in ("memory_x", "memory_y", "memory_tid")}
    if isinstance(plugin, (ExtraLossPlugin, RoundRecorder)):
        return None
    custom = getattr(plugin, "state_dict", None)
    if callable(custom):
        return custom()
    return None  # stateless between rounds (evaluator, periodic eval, ...)


def _load_plugin_state(plugin: Any, state: Any, driver: RoundDriver) -> None:
    device = driver.device
    if isinstance(plugin, Clock):
        for f in _CLOCK_FIELDS:
            setattr(plugin, f, int(state[f]))
    elif isinstance(plugin, EWCPlugin):
        plugin.saved_params = defaultdict(dict, _int_keyed(
            state["saved_params"], lambda v: _pd_dict_load(v, device)))
        plugin.importances = defaultdict(dict, _int_keyed(
            state["importances"], lambda v: _pd_dict_load(v, device)))
    elif isinstance(plugin, LwFPlugin):
        lwf = plugin.lwf
        lwf.expcount = int(state["expcount"])
        lwf.prev_classes_by_task = defaultdict(set)
        for k, classes in state["prev_classes"].items():
            seen: set[int] = set()
            for c in classes:
                seen.add(int(c))
            lwf.prev_classes_by_task[int(k)] = seen
        lwf.prev_model = None
        if state["prev_model"] is not None:
            prev = copy.deepcopy(driver.strategy.model)
            prev.load_state_dict({k: _t(v) for k, v in state["prev_model"].items()})
            for module, mode in zip(prev.modules(), state["prev_model_modes"], strict=True):
                module.training = bool(mode)
            lwf.prev_model = prev
    elif isinstance(plugin, ReplayPlugin):
        load_storage(plugin.storage_policy, state["storage"])
    elif isinstance(plugin, SynapticIntelligencePlugin):
        cpu = torch.device("cpu")  # Avalanche keeps SI's data on the CPU
        plugin.ewc_data = tuple(_pd_dict_load(d, cpu) for d in state["ewc_data"])
        plugin.syn_data = {k: _pd_dict_load(state["syn_data"][k], cpu) for k in _SI_SYN_FIELDS}
    elif isinstance(plugin, MASPlugin):
        plugin.params = _pd_dict_load(state["params"], device)
        plugin.importance = _pd_dict_load(state["importance"], device)
    elif isinstance(plugin, _AvalancheAGEMPlugin):
        plugin.buffers = []
        plugin.buffer_dataloader = None
        plugin.buffer_dliter = iter([])
        buffers = [dataset_from_state(b) for b in state["buffers"]]
        if buffers:  # Avalanche's update_memory appends the last one and rebuilds the sampler
            plugin.buffers = buffers[:-1]
            _AvalancheAGEMPlugin.update_memory(plugin, buffers[-1])
    elif isinstance(plugin, GEMPlugin):
        for f in ("memory_x", "memory_y", "memory_tid"):
            setattr(plugin, f, _int_keyed(state[f], _t))
    elif state is not None:
        loader = getattr(plugin, "load_state_dict", None)
        if callable(loader):
            loader(state)
