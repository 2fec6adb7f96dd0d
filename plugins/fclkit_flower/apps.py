"""The Flower apps: ``client_app`` (every node) and ``server_app`` (deployment).

Message layout (server -> node), one message per client and step:

=================  =============================================================
``message_type``   ``query`` (which client do you serve?), ``train`` (one round of
                   one task), ``evaluate`` (after a task, and once before the first)
``content["fclkit"]``  ConfigRecord: ``client`` (id), ``config`` (the experiment
                   configuration as JSON), ``components`` (module/class of every
                   component, JSON), ``task``/``round``/``rounds_per_task`` or
                   ``task_index``, ``threads``, ``prune`` (deployment: keep only this
                   client's data), ``payload`` (JSON skeleton of the payload)
``content["payload"]`` ArrayRecord: the payload's tensors. Payload of ``train``:
                   ``{"download": Download | None}``; of ``evaluate``:
                   ``{"download": ..., "global_fm_state": ...}``
=================  =============================================================

Reply (node -> server): ConfigRecord ``fclkit`` with ``status`` (``ok`` or
``failed``), ``reason``, ``client``, ``payload`` (skeleton), and ArrayRecord
``payload``: an ``Upload`` as a state (``train``) or the accuracies (``evaluate``).

The node keeps its client's whole state (``Client.state_dict()``: small model,
strategy state such as EWC importances / replay memory / LwF's previous model /
optimizer, FM part) in ``context.state`` -- ArrayRecord ``fclkit.client.arrays`` +
ConfigRecord ``fclkit.client`` -- and, when its ``--node-config`` has
``fclkit-state-dir``, also in a safetensors file there. On every message it
rebuilds the client (``experiment.build_client(cid)``), restores that state, does
its step, and saves the state back. A step that fails is rolled back exactly as
the ``local`` engine does (state before the round, then the round's Download).
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import os
import time
import traceback
from collections import OrderedDict
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

#: record names in messages and in context.state
HEADER, PAYLOAD = "fclkit", "payload"
STATE_META, STATE_ARRAYS = "fclkit.client", "fclkit.client.arrays"
#: node_config keys
PARTITION_KEY, STATE_DIR_KEY = "partition-id", "fclkit-state-dir"
#: run_config keys of a deployment run (written into the generated Flower App)
RUN_CONFIG, RUN_COMPONENTS, RUN_RESULT = "fclkit-config", "fclkit-components", "fclkit-result"


# ------------------------------------------------------------- shared helpers


def component_refs(experiment: Any) -> list[dict[str, str]]:
    """Where every component of ``experiment`` lives, so another process can import it."""
    entries = [experiment.strategy, experiment.fusion_entry, experiment.benchmark_entry,
               experiment.engine_entry, *experiment.model_entries.values()]
    if experiment.fm_entry is not None:
        entries.append(experiment.fm_entry)
    return [{"kind": e.kind, "name": e.name, "module": e.cls.__module__,
             "qualname": e.cls.__qualname__} for e in entries]


def build_registry_for(refs: list[dict[str, str]]) -> Any:
    """Installed plugins + this one, plus any component given as a class (research code)."""
    import fclkit_flower
    from fclkit.errors import FclkitError
    from fclkit.plugins import build_registry, components_from_classes

    registry = build_registry(extra_plugins=[fclkit_flower])
    for ref in refs:
        if ref["name"] in registry.components[ref["kind"]]:
            continue
        try:
            obj: Any = importlib.import_module(ref["module"])
            for part in ref["qualname"].split("."):
                obj = getattr(obj, part)
        except Exception as exc:
            raise FclkitError(
                f"{ref['kind']} {ref['name']!r} ({ref['module']}.{ref['qualname']}) cannot be "
                f"imported in this Flower process: {type(exc).__name__}: {exc}",
                hint="install the plugin (or put the module on PYTHONPATH) on every node") from None
        components_from_classes(registry, [obj], plugin=ref["module"])
    return registry


def build_experiment(config_json: str, refs_json: str) -> Any:
    from fclkit.config import config_from_mapping
    from fclkit.runtime.experiment import Experiment

    config = config_from_mapping(json.loads(config_json))
    return Experiment(config, build_registry_for(json.loads(refs_json)))


def field(record: Any, key: str, kind: type, default: Any = None) -> Any:
    """``record[key]`` checked to be a ``kind`` (a malformed message is an error, not a crash)."""
    value = record.get(key, default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"message field {key!r} is {value!r}, expected a {kind.__name__}")
    return value


def arrays(record: Any) -> ArrayRecord | None:
    return record if isinstance(record, ArrayRecord) else None


def one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().replace("\n", " ")
    hint = getattr(exc, "hint", None)
    return f"{text} (hint: {hint})" if hint else text


# ------------------------------------------------------------------ the node

#: Experiments prepared in this process (simulation: a Ray actor serves many messages)
_EXPERIMENTS: OrderedDict[str, Any] = OrderedDict()
_MAX_CACHED = 2


def _prepared_experiment(header: ConfigRecord) -> Any:
    """The client-side Experiment for this message, built and prepared once per process."""
    config, components = field(header, "config", str), field(header, "components", str)
    prune = field(header, "client", int) if field(header, "prune", bool, False) else -1
    digest = hashlib.sha256(f"{config}\0{components}\0{prune}".encode()).hexdigest()
    if digest in _EXPERIMENTS:
        _EXPERIMENTS.move_to_end(digest)
        return _EXPERIMENTS[digest]
    experiment = build_experiment(config, components)
    experiment.prepare()
    if prune >= 0:
        _keep_only(experiment, prune)
    _EXPERIMENTS[digest] = experiment
    while len(_EXPERIMENTS) > _MAX_CACHED:
        _EXPERIMENTS.popitem(last=False)
    return experiment


def _keep_only(experiment: Any, cid: int) -> None:
    """Drop every other client's data and the server's public set from this process."""
    import attrs

    from fclkit.stream import ClientStream

    def empty(task: Any) -> Any:
        return attrs.evolve(task, x_train=task.x_train[:0].clone(),
                            y_train=task.y_train[:0].clone(), x_test=task.x_test[:0].clone(),
                            y_test=task.y_test[:0].clone())

    stream = experiment.stream
    clients = tuple(cs if cs.client_id == cid else
                    ClientStream(cs.client_id, tuple(empty(t) for t in cs.tasks))
                    for cs in stream.clients)
    experiment.stream = attrs.evolve(stream, clients=clients, public=None)
    experiment.server = None


def _state_file(context: Context, cid: int) -> Path | None:
    folder = context.node_config.get(STATE_DIR_KEY)
    if not folder:
        return None
    return Path(str(folder)) / f"run-{context.run_id}" / f"client-{cid}.safetensors"


def load_client_state(context: Context, cid: int, config_key: str) -> Any | None:
    from fclkit.serialization import load_state

    from .codec import decode

    meta = context.state.get(STATE_META)
    if isinstance(meta, ConfigRecord) and meta.get("client") == cid \
            and meta.get("config") == config_key:
        return decode(field(meta, "skeleton", str), arrays(context.state.get(STATE_ARRAYS)))
    path = _state_file(context, cid)
    if path is not None and path.exists():
        return load_state(path)
    return None


def save_client_state(context: Context, cid: int, config_key: str, state: Any) -> None:
    from fclkit.serialization import save_state

    from .codec import encode

    skeleton, arrays = encode(state)
    context.state[STATE_ARRAYS] = arrays
    context.state[STATE_META] = ConfigRecord(
        {"client": cid, "config": config_key, "skeleton": skeleton})
    path = _state_file(context, cid)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_state(state, path)


def _reply(message: Message, cid: int, payload: Any = None, *, reason: str = "") -> Message:
    from .codec import encode

    skeleton, arrays = encode(payload)
    header = ConfigRecord({"status": "failed" if reason else "ok", "reason": reason,
                           "client": cid, "payload": skeleton})
    return Message(RecordDict({HEADER: header, PAYLOAD: arrays}), reply_to=message)


def _serve(message: Message, context: Context, step: str) -> Message:
    """Rebuild the client, restore its state, do ``step``, save the state, reply."""
    header = message.content.get(HEADER)
    cid = header.get("client", -1) if isinstance(header, ConfigRecord) else -1
    cid = cid if isinstance(cid, int) else -1
    try:
        if not isinstance(header, ConfigRecord):
            raise ValueError(f"message has no {HEADER!r} ConfigRecord")
        partition = context.node_config.get(PARTITION_KEY)
        if partition is not None and partition != cid:
            raise RuntimeError(f"this node serves client {partition}, not client {cid}")
        import torch

        from fclkit.messages import Download, RoundInfo

        from .codec import decode

        torch.set_num_threads(max(1, field(header, "threads", int, 1)))
        experiment = _prepared_experiment(header)
        config_key = hashlib.sha256(field(header, "config", str).encode()).hexdigest()
        payload = decode(field(header, "payload", str), arrays(message.content.get(PAYLOAD)))
        d = payload.get("download")
        download = None if d is None else Download(
            small_state=d["small_state"], fm_state=d["fm_state"], metadata=d["metadata"])
        state = load_client_state(context, cid, config_key)

        def fresh_client() -> Any:
            client = experiment.build_client(cid)
            if state is not None:  # a copy: loading may alias tensors that training changes
                client.load_state_dict(copy.deepcopy(state))
            return client

        client = fresh_client()
        if step == "evaluate":
            client.apply(download)
            result = client.evaluate(payload.get("global_fm_state"))
            save_client_state(context, cid, config_key, client.state_dict())
            return _reply(message, cid, {"accuracies": result})

        info = RoundInfo(task=field(header, "task", int), round=field(header, "round", int),
                         rounds_per_task=field(header, "rounds_per_task", int))
        limit = field(header, "client_timeout", float, 0.0)
        started = time.perf_counter()
        try:
            upload = client.fit(info, download)
        except Exception as exc:  # roll back like the local engine, then report
            failure = one_line(exc)
        else:
            took = time.perf_counter() - started
            if not limit or took <= limit:
                save_client_state(context, cid, config_key, client.state_dict())
                return _reply(message, cid, {
                    "client_id": upload.client_id, "architecture": upload.architecture,
                    "classes_seen": list(upload.classes_seen),
                    "num_examples": upload.num_examples, "small_state": upload.small_state,
                    "metadata": upload.metadata})
            failure = f"exceeded the time limit of {limit:g}s (took {took:.1f}s)"
        client = fresh_client()
        client.apply(download)
        save_client_state(context, cid, config_key, client.state_dict())
        return _reply(message, cid, reason=failure)
    except Exception as exc:  # the node could not even set up: report, keep the old state
        if os.environ.get("FCLKIT_DEBUG"):
            traceback.print_exc()
        return _reply(message, cid, reason=one_line(exc))


client_app = ClientApp()


@client_app.query()
def whoami(message: Message, context: Context) -> Message:
    """Which client this node serves (its ``partition-id``), for the server's map."""
    partition = context.node_config.get(PARTITION_KEY)
    if not isinstance(partition, int) or isinstance(partition, bool):
        return _reply(message, -1, reason=f"node has no integer {PARTITION_KEY!r} in its "
                      f"--node-config (got {partition!r})")
    return _reply(message, partition)


@client_app.train()
def train(message: Message, context: Context) -> Message:
    return _serve(message, context, "fit")


@client_app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    return _serve(message, context, "evaluate")


# ------------------------------------------------------ the server (deployment)

server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """Deployment: rebuild the experiment from the run config, run it, write the result."""
    from fclkit.serialization import atomic_write_text

    from .executor import FlowerExecutor

    run_config = context.run_config
    result_path = str(run_config.get(RUN_RESULT, ""))
    experiment = None

    def write(result: dict[str, Any]) -> None:
        if result_path:
            atomic_write_text(result_path, json.dumps(result))

    try:
        experiment = build_experiment(str(run_config[RUN_CONFIG]),
                                      str(run_config[RUN_COMPONENTS]))
        experiment.prepare()
        executor = FlowerExecutor(grid, experiment, experiment.engine_options, deployment=True)
        metrics = experiment.run_loop(executor)
        partial, rows = experiment.partial_metrics()
        write({"status": "ok", "metrics": metrics, "rows": rows,
               "failures": partial.get("failures", [])})
    except BaseException as exc:
        partial, rows = experiment.partial_metrics() if experiment is not None else ({}, [])
        write({"status": "failed", "error": str(exc), "type": type(exc).__name__,
               "hint": getattr(exc, "hint", None), "partial": partial, "rows": rows})
        raise
