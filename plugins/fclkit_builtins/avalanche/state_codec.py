"""The state of an Avalanche-backed strategy as tensors and JSON values (imports torch
and Avalanche).

Only imported when a strategy is built, so ``import fclkit_builtins.avalanche`` stays light.

State
=====

:meth:`~fclkit_builtins.avalanche.round_driver.RoundDriver.state_dict` is a nested
dict of tensors and JSON values: the open task, the optimizer's per-parameter
state (momentum / Adam moments, keyed by parameter name; Avalanche keeps it
across experiences), the template's own state (DER's memory) and one entry per
plugin, in plugin order: the clock's counters, EWC importances and anchor
weights, LwF's previous model (as a state dict) and previous classes, replay
buffers (examples, targets, task labels, reservoir weights, group layout), SI
and MAS accumulators, GEM and A-GEM memories. Extra plugins may take part by
defining ``state_dict()`` and ``load_state_dict(state)``. The small model's own
weights are not included.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from . import lazy_import  # noqa: F401  (first: Avalanche imported lazily)

# isort: split
from avalanche.benchmarks.utils.classification_dataset import (
    _make_taskaware_tensor_classification_dataset,
)
from avalanche.benchmarks.utils.data import make_avalanche_dataset
from avalanche.benchmarks.utils.data_attribute import TensorDataAttribute
from avalanche.benchmarks.utils.flat_data import FlatData
from avalanche.benchmarks.utils.utils import concat_datasets
from avalanche.training.plugins.agem import AGEMPlugin as _AvalancheAGEMPlugin
from avalanche.training.plugins.clock import Clock
from avalanche.training.plugins.ewc import EWCPlugin
from avalanche.training.plugins.gem import GEMPlugin
from avalanche.training.plugins.lwf import LwFPlugin
from avalanche.training.plugins.mas import MASPlugin
from avalanche.training.plugins.replay import ReplayPlugin
from avalanche.training.plugins.synaptic_intelligence import SynapticIntelligencePlugin
from avalanche.training.storage_policy import BalancedExemplarsBuffer, ReservoirSamplingBuffer
from avalanche.training.supervised.der import DER
from avalanche.training.utils import ParamData

from fclkit.errors import FclkitError

from .avalanche_plugins import ExtraLossPlugin, RoundRecorder

if TYPE_CHECKING:
    from .round_driver import RoundDriver

STATE_FORMAT = 1

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
