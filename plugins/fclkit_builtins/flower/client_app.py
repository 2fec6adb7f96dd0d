"""The node side: ``client_app``, the Flower ClientApp every SuperNode runs.

The node keeps its client's whole state (``Client.state_dict()``: small model,
strategy state such as EWC importances / replay memory / LwF's previous model /
optimizer, FM part) in ``context.state`` -- ArrayRecord ``fclkit.client.arrays`` +
ConfigRecord ``fclkit.client`` -- and, when its ``--node-config`` has
``fclkit-state-dir``, also in a safetensors file there. On every message it takes
the client, restores that state -- or the one the message carries (a resumed run,
or a node taking over a client), which wins -- does its step, and saves the state
back.

A process keeps the experiment it prepared and the clients it built (up to
``MAX_CLIENTS``, least recently used first out): a simulation's Ray actor serves
many messages, and building a client (Avalanche's strategy constructor alone) costs
more than a small model's round. A simulation's actor builds every client (up to
``MAX_CLIENTS``) when it prepares the experiment, as the local engine does before
its first round. Each saved state carries a random token; when the node's state
holds the token this process saved last for that client, the kept client *is* that
state and is used as it is. Otherwise (another actor served the client since, or
the message carries a state) the state is loaded into the kept client -- what a
round's roll-back does -- or, when none is kept or the node holds no state for it,
into a newly built one. A deployment's per-message ``flwr-clientapp`` process hands
the message to the node's worker instead (:mod:`.node_worker`), which keeps them the
same way. When the server writes checkpoints (``want_state``), the reply carries the
state after the step too.
A round runs under the core's client guard (``Client.fit_guarded``), as on the
``local`` engine: a round that raises, runs out of time or uploads an update the
validator rejects (e.g. NaN weights) rolls the client back to its state before
the round, with the round's Download applied.
The messages' layout is in :mod:`.protocol`.
"""

from __future__ import annotations

import hashlib
import json
import os
import traceback
import uuid
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
#: Clients built in this process: (experiment digest, client id) -> (token of the state
#: they hold, client)
_CLIENTS: OrderedDict[tuple[str, int], tuple[str, Any]] = OrderedDict()
#: at most this many clients are kept per process
MAX_CLIENTS = 64
#: the token of a client built in advance and not used yet (no saved state has it)
_FRESH = "fresh"


def _prepared_experiment(header: ConfigRecord) -> tuple[str, Any]:
    """The client-side Experiment for this message, built and prepared once per process
    (with its digest)."""
    config, components = field(header, "config", str), field(header, "components", str)
    prune = field(header, "client", int) if field(header, "prune", bool, False) else -1
    digest = hashlib.sha256(f"{config}\0{components}\0{prune}".encode()).hexdigest()
    if digest in _EXPERIMENTS:
        _EXPERIMENTS.move_to_end(digest)
        return digest, _EXPERIMENTS[digest]
    experiment = build_experiment(config, components)
    experiment.prepare()
    if prune >= 0:
        _keep_only(experiment, prune)
    _EXPERIMENTS[digest] = experiment
    while len(_EXPERIMENTS) > _MAX_CACHED:
        gone, _ = _EXPERIMENTS.popitem(last=False)
        for key in [k for k in _CLIENTS if k[0] == gone]:
            del _CLIENTS[key]
    if prune < 0:
        # a simulation's actor may serve any client: build them now, as the local engine
        # does before its first round, rather than one by one inside the training rounds
        built = experiment.build_clients(range(min(experiment.config.clients, MAX_CLIENTS)))
        for cid, client in built.items():
            _CLIENTS[(digest, cid)] = (_FRESH, client)
    return digest, experiment


#: experiment digest -> (task index, the memo of that evaluation): the clients this
#: process evaluates with the same model (after a FedAvg download, all of them) are
#: evaluated once (fclkit.runtime.EvaluationMemo)
_MEMOS: dict[str, tuple[int, Any]] = {}


def _evaluation_memo(digest: str, task_index: int) -> Any:
    from fclkit.runtime import EvaluationMemo

    kept = _MEMOS.get(digest)
    if kept is None or kept[0] != task_index:
        for gone in [d for d in _MEMOS if d not in _EXPERIMENTS]:
            del _MEMOS[gone]
        kept = _MEMOS[digest] = (task_index, EvaluationMemo())
    return kept[1]


def _client(experiment: Any, key: tuple[str, int], state: Any, token: str | None) -> Any:
    """The client ``key`` holding ``state`` (None: a new client), built only when needed.

    ``token``: the token of the node's saved state when ``state`` is that one; a kept
    client saved with the same token already holds it."""
    kept = _CLIENTS.get(key)
    if kept is not None and state is None and token is None:
        if kept[0] == _FRESH:  # built in advance, never used: a new client
            return kept[1]
        del _CLIENTS[key]  # the node holds no state: this client starts afresh
        kept = None
    if kept is not None and token is not None and kept[0] == token:
        return kept[1]
    client = kept[1] if kept is not None else experiment.build_client(key[1])
    if state is not None:
        client.load_state_dict(state)
    return client


def _keep(key: tuple[str, int], token: str, client: Any) -> None:
    _CLIENTS[key] = (token, client)
    _CLIENTS.move_to_end(key)
    while len(_CLIENTS) > MAX_CLIENTS:
        _CLIENTS.popitem(last=False)


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


def state_token(context: Context, cid: int, config_key: str) -> str | None:
    """The token of the client state the node holds (None: none, or another client's)."""
    meta = context.state.get(STATE_META)
    if isinstance(meta, ConfigRecord) and meta.get("client") == cid \
            and meta.get("config") == config_key:
        token = meta.get("token")
        return token if isinstance(token, str) and token else None
    return None


def load_client_state(context: Context, cid: int, config_key: str) -> Any | None:
    """The client state the node holds (``context.state``, else its state file)."""
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


def save_client_state(context: Context, cid: int, config_key: str, state: Any,
                      token: str = "") -> tuple[str, ArrayRecord]:
    """Keep ``state`` in ``context.state`` (and the state folder) under ``token``;
    returns it encoded."""
    from fclkit.serialization import save_state

    from .codec import encode

    skeleton, arrays = encode(state)
    context.state[STATE_ARRAYS] = arrays
    context.state[STATE_META] = ConfigRecord(
        {"client": cid, "config": config_key, "skeleton": skeleton, "token": token})
    path = _state_file(context, cid)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_state(state, path)
    return skeleton, arrays


def _reply_content(cid: int, payload: Any = None, *, reason: str = "",
                   state: tuple[str, ArrayRecord] | None = None) -> RecordDict:
    if payload is None or isinstance(payload, (bool, int, float, str)):
        # no tensors: what codec.encode gives, without importing torch (a ``whoami``
        # reply costs a per-message process no torch import)
        skeleton, arrays = json.dumps(payload), ArrayRecord()
    else:
        from .codec import encode

        skeleton, arrays = encode(payload)
    header = ConfigRecord({"status": "failed" if reason else "ok", "reason": reason,
                           "client": cid, "payload": skeleton})
    content = RecordDict({HEADER: header, PAYLOAD: arrays})
    if state is not None:  # the client's state after the step, for the server's checkpoints
        header[STATE] = state[0]
        content[STATE] = state[1]
    return content


def _reply(message: Message, cid: int, payload: Any = None, *, reason: str = "",
           state: tuple[str, ArrayRecord] | None = None) -> Message:
    return Message(_reply_content(cid, payload, reason=reason, state=state), reply_to=message)


def _sent_state(header: ConfigRecord, content: RecordDict) -> Any | None:
    """The client state the message carries (the node loads it instead of its own)."""
    from .codec import decode

    if header.get(STATE) is None:
        return None
    return decode(field(header, STATE, str), arrays(content.get(STATE)))


def _serve(message: Message, context: Context, step: str) -> Message:
    """Do ``step`` for the message's client: in a per-message ``flwr-clientapp`` process
    of a deployment, in the node's worker (:mod:`.node_worker`), else here."""
    from . import node_worker

    if node_worker.wanted(message.content, context):
        content = node_worker.relay(message.content, context, step)
        if content is not None:
            return Message(content, reply_to=message)
    return Message(serve_content(message.content, context, step), reply_to=message)


def serve_content(content: RecordDict, context: Context, step: str) -> RecordDict:
    """Take the client, restore its state, do ``step``, save the state; the reply's
    content. Runs at the run's torch thread count (the header's ``threads``), and leaves
    the process's as it found it (a ClientApp called in the caller's process, as tests
    and node workers do, would otherwise change it for everything that runs after)."""
    import torch

    threads = torch.get_num_threads()
    try:
        return _serve_content(content, context, step)
    finally:
        torch.set_num_threads(threads)


def _serve_content(content: RecordDict, context: Context, step: str) -> RecordDict:
    header = content.get(HEADER)
    cid = header.get("client", -1) if isinstance(header, ConfigRecord) else -1
    cid = cid if isinstance(cid, int) else -1
    key: tuple[str, int] | None = None
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
        digest, experiment = _prepared_experiment(header)
        key = (digest, cid)
        config_key = hashlib.sha256(field(header, "config", str).encode()).hexdigest()
        payload = decode(field(header, "payload", str), arrays(content.get(PAYLOAD)))
        download = Download.from_state(payload.get("download"))
        want_state = field(header, "want_state", bool, False)
        state = _sent_state(header, content)  # fresh tensors: nothing else holds them
        token = None
        if state is None:
            token = state_token(context, cid, config_key)
            kept = _CLIENTS.get(key)
            if kept is None or token is None or kept[0] != token:
                # decoded into new tensors that nothing else holds: loading may keep them
                state = load_client_state(context, cid, config_key)
                token = None if state is None else token
        client = _client(experiment, key, state, token)
        new_token = uuid.uuid4().hex
        if step == "evaluate":
            client.apply(download)
            result = client.evaluate(Download.from_state(payload.get("global_fm")),
                                     _evaluation_memo(digest, field(header, "task_index",
                                                                    int, -1)))
            saved = save_client_state(context, cid, config_key, client.state_dict(), new_token)
            _keep(key, new_token, client)
            return _reply_content(cid, {"accuracies": result},
                                  state=saved if want_state else None)

        info = RoundInfo(task=field(header, "task", int), round=field(header, "round", int),
                         rounds_per_task=field(header, "rounds_per_task", int),
                         client_last=field(header, "client_last", bool)
                         if header.get("client_last") is not None else None)
        # the core's client guard: tried, timed, validated, rolled back on failure
        outcome = client.fit_guarded(info, download,
                                     timeout=field(header, "client_timeout", float, 0.0))
        saved = save_client_state(context, cid, config_key, client.state_dict(), new_token)
        _keep(key, new_token, client)
        kept = saved if want_state else None
        if outcome.failure is not None:
            if os.environ.get("FCLKIT_DEBUG") and outcome.failure.error is not None:
                traceback.print_exception(outcome.failure.error)
            return _reply_content(cid, reason=outcome.failure.reason, state=kept)
        # a rejected upload still goes to the server, which validates it again and
        # records why (as with the local engine); this node has already rolled back
        return _reply_content(cid, outcome.upload.to_state() if outcome.upload else None,
                              state=kept)
    except Exception as exc:  # the node could not even set up: report, keep the old state
        if key is not None:  # a client half-way through a step is not kept
            _CLIENTS.pop(key, None)
        if os.environ.get("FCLKIT_DEBUG"):
            traceback.print_exc()
        return _reply_content(cid, reason=one_line(exc))


client_app = ClientApp()


@client_app.query()
def whoami(message: Message, context: Context) -> Message:
    """Which client this node serves (its ``partition-id``), for the server's map; with
    ``bye`` in the header (the run is over), the node's worker is told to exit."""
    header = message.content.get(HEADER)
    if isinstance(header, ConfigRecord) and header.get("bye") is True:
        from . import node_worker

        node_worker.stop(message.content, context)
        cid = header.get("client")
        return _reply(message, cid if isinstance(cid, int) else -1)
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
