"""The node side: ``client_app``, the Flower ClientApp every SuperNode runs.

The node keeps its client's whole state (``Client.state_dict()``: small model,
strategy state such as EWC importances / replay memory / LwF's previous model /
optimizer, FM part) in ``context.state`` -- ArrayRecord ``fclkit.client.arrays`` +
ConfigRecord ``fclkit.client`` -- and, when its ``--node-config`` has
``fclkit-state-dir``, also in a safetensors file there. On every message it
rebuilds the client (``experiment.build_client(cid)``), restores that state -- or the
one the message carries (a resumed run, or a node taking over a client), which
wins -- does its step, and saves the state back. When the server writes
checkpoints (``want_state``), the reply carries the state after the step too.
A round runs under the core's client guard (``Client.fit_guarded``), as on the
``local`` engine: a round that raises, runs out of time or uploads an update the
validator rejects (e.g. NaN weights) rolls the client back to its state before
the round, with the round's Download applied.
The messages' layout is in :mod:`.protocol`.
"""

from __future__ import annotations

import copy
import hashlib
import os
import traceback
from collections import OrderedDict
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from .protocol import (
    HEADER,
    PARTITION_KEY,
    PAYLOAD,
    STATE,
    STATE_ARRAYS,
    STATE_DIR_KEY,
    STATE_META,
    arrays,
    build_experiment,
    field,
    one_line,
)

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


def save_client_state(context: Context, cid: int, config_key: str, state: Any
                      ) -> tuple[str, ArrayRecord]:
    """Keep ``state`` in ``context.state`` (and the state folder); returns it encoded."""
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
    return skeleton, arrays


def _reply(message: Message, cid: int, payload: Any = None, *, reason: str = "",
           state: tuple[str, ArrayRecord] | None = None) -> Message:
    from .codec import encode

    skeleton, arrays = encode(payload)
    header = ConfigRecord({"status": "failed" if reason else "ok", "reason": reason,
                           "client": cid, "payload": skeleton})
    content = RecordDict({HEADER: header, PAYLOAD: arrays})
    if state is not None:  # the client's state after the step, for the server's checkpoints
        header[STATE] = state[0]
        content[STATE] = state[1]
    return Message(content, reply_to=message)


def _sent_state(header: ConfigRecord, message: Message) -> Any | None:
    """The client state the message carries (the node loads it instead of its own)."""
    from .codec import decode

    if header.get(STATE) is None:
        return None
    return decode(field(header, STATE, str), arrays(message.content.get(STATE)))


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
        download = Download.from_state(payload.get("download"))
        want_state = field(header, "want_state", bool, False)
        state = _sent_state(header, message)  # fresh tensors: nothing else holds them
        if state is None:  # a copy: loading may alias tensors that training changes
            state = copy.deepcopy(load_client_state(context, cid, config_key))
        client = experiment.build_client(cid)
        if state is not None:
            client.load_state_dict(state)
        if step == "evaluate":
            client.apply(download)
            result = client.evaluate(Download.from_state(payload.get("global_fm")))
            saved = save_client_state(context, cid, config_key, client.state_dict())
            return _reply(message, cid, {"accuracies": result},
                          state=saved if want_state else None)

        info = RoundInfo(task=field(header, "task", int), round=field(header, "round", int),
                         rounds_per_task=field(header, "rounds_per_task", int))
        # the core's client guard: tried, timed, validated, rolled back on failure
        outcome = client.fit_guarded(info, download,
                                     timeout=field(header, "client_timeout", float, 0.0))
        saved = save_client_state(context, cid, config_key, client.state_dict())
        kept = saved if want_state else None
        if outcome.failure is not None:
            if os.environ.get("FCLKIT_DEBUG") and outcome.failure.error is not None:
                traceback.print_exception(outcome.failure.error)
            return _reply(message, cid, reason=outcome.failure.reason, state=kept)
        # a rejected upload still goes to the server, which validates it again and
        # records why (as with the local engine); this node has already rolled back
        return _reply(message, cid, outcome.upload.to_state() if outcome.upload else None,
                      state=kept)
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
