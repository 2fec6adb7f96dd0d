"""``FlowerExecutor``: the server side of a round, as Flower messages through a ``Grid``.

Checkpoints: when the run writes them, every node replies with its client's state
after the step (``want_state``), so :meth:`FlowerExecutor.client_states` has every
client's latest state without extra messages; :meth:`~FlowerExecutor.load_client_states`
(a resumed run) sends each client its state with its next message, and so does a
client whose node changed (a restarted SuperNode).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from flwr.app import DEFAULT_TTL, ArrayRecord, ConfigRecord, Message, RecordDict

from fclkit.errors import FclkitError
from fclkit.interfaces import ClientExecutor
from fclkit.messages import Download, Failure, RoundInfo, Upload

from .codec import decode, encode
from .protocol import HEADER, PAYLOAD, STATE, arrays, cause, field

#: seconds between two polls for replies (deployment: an HTTP request to the SuperLink;
#: simulation: a look-up in this process's in-memory link state)
POLL_SECONDS = 0.2
POLL_SECONDS_SIMULATION = 0.02


def _state(download: Download | None) -> dict[str, Any] | None:
    return None if download is None else download.to_state()


class FlowerExecutor(ClientExecutor):
    """Sends each client's step to the node serving it and turns replies into results.

    Nodes are found at the start: every node the grid knows is asked which client
    it serves (its ``partition-id``); before every step, nodes that joined since are
    asked too, and a client whose node went offline moves to the node that now
    serves it (for an evaluation, which needs every client, the executor waits up to
    ``node_wait_timeout`` for one). A node that errors, replies with a failure, is
    offline, or does not reply within ``reply_timeout`` makes its client a
    :class:`~fclkit.messages.Failure` for that round, with the reason.
    """

    def __init__(self, grid: Any, experiment: Any, options: Any, *, deployment: bool) -> None:
        self.grid = grid
        self.experiment = experiment
        self.options = options
        self.deployment = deployment
        self.poll = POLL_SECONDS if deployment else POLL_SECONDS_SIMULATION
        config = experiment.config
        client_config = (config.evolve(device=options.client_device)
                         if options.client_device else config)
        #: the run writes checkpoints: every reply carries its client's state
        self.collect_states = experiment.run_dir is not None and bool(config.checkpoint)
        self.common = {
            "config": json.dumps(client_config.to_dict()),
            "components": json.dumps(experiment.component_refs()),
            "threads": options.client_threads or config.threads or 1,
            "prune": deployment,
            "client_timeout": float(config.client_timeout),
            "want_state": self.collect_states,
        }
        self.num_clients = config.clients
        self.timeout = options.reply_timeout or None
        self.ttl = max(float(options.reply_timeout), 60.0) if options.reply_timeout else DEFAULT_TTL
        self.asked: set[int] = set()
        self.nodes: dict[int, int] = {}
        #: every client's latest state as it travels (skeleton, tensors), decoded on demand
        self.states: dict[int, tuple[str, ArrayRecord]] = {}
        #: states to send with a client's next message (until its node has loaded one)
        self.to_send: dict[int, tuple[str, ArrayRecord]] = {}
        self._discover(options.node_wait_timeout)

    # ------------------------------------------------------------- nodes

    def _ask(self, wait: float) -> tuple[list[tuple[int, int]], list[str]]:
        """Ask every node not asked yet which client it serves: (node, client) pairs."""
        new = [n for n in self.grid.get_node_ids() if n not in self.asked]
        if not new:
            return [], []
        self.asked.update(new)
        messages = [self._message(n, "query", -1, {}, None, "whoami") for n in new]
        found, problems = [], []
        for reply in self._send_and_receive(messages, max(wait, 1.0)):
            node = reply.metadata.src_node_id
            if reply.has_error():
                problems.append(f"node {node}: {cause(reply.error.reason or '')}")
                continue
            header = reply.content.get(HEADER)
            cid = header.get("client") if isinstance(header, ConfigRecord) else None
            if not isinstance(header, ConfigRecord) or not isinstance(cid, int):
                problems.append(f"node {node}: malformed reply")
            elif header.get("status") != "ok":
                problems.append(f"node {node}: {header.get('reason')!s}")
            elif 0 <= cid < self.num_clients:  # else: an idle extra node
                found.append((node, cid))
        return found, problems

    def _discover(self, wait: float) -> None:
        """Map every client id to the node serving it (its ``partition-id``)."""
        deadline = time.monotonic() + wait
        problems: list[str] = []
        self.experiment.reporter.phase("waiting for Flower nodes")
        while True:
            found, trouble = self._ask(deadline - time.monotonic())
            problems += trouble
            if trouble and not self.deployment:
                # a simulated node that cannot even say which client it serves will not
                # recover (its Ray worker cannot import or run the ClientApp): say why, once
                raise FclkitError(
                    "the Flower simulation's client processes failed: "
                    + _same_causes(trouble),
                    hint="rerun with --engine-opt flower_logs=true for Ray's and Flower's logs")
            for node, cid in found:
                if cid in self.nodes and self.nodes[cid] != node:
                    raise FclkitError(
                        f"two Flower nodes ({self.nodes[cid]} and {node}) serve client {cid}",
                        hint="give every SuperNode its own partition-id in --node-config")
                self.nodes[cid] = node
            missing = [c for c in range(self.num_clients) if c not in self.nodes]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise FclkitError(
                    f"no Flower node serves client(s) {', '.join(map(str, missing))} after "
                    f"{wait:g}s ({len(self.asked)} node(s) connected"
                    + (": " + _same_causes(problems) if problems else "") + ")",
                    hint="start one SuperNode per client with --node-config "
                    "'partition-id=K num-partitions=N', or raise node_wait_timeout")
            time.sleep(0.2)

    def _online(self) -> set[int] | None:
        """The nodes the grid reports online (None: this grid cannot tell)."""
        try:
            return set(self.grid.get_node_ids())
        except Exception:  # noqa: BLE001 - a grid that cannot list nodes: assume all online
            return None

    def _refresh(self, clients: list[int], *, wait: float = 0.0) -> None:
        """A node that joined since (e.g. a restarted SuperNode) takes over its client;
        with ``wait``, wait that long for a node for every client of ``clients`` whose
        node is offline."""
        deadline = time.monotonic() + wait
        announced = False
        while True:
            found, problems = self._ask(min(60.0, self.options.node_wait_timeout))
            for problem in problems:
                self.experiment.reporter.warn(f"Flower {problem}")
            for node, cid in found:
                if self.nodes.get(cid) != node:
                    self.experiment.reporter.warn(
                        f"client {cid} is now served by Flower node {node} "
                        f"(was node {self.nodes.get(cid)})")
                    self.nodes[cid] = node
                    if cid in self.states:  # the new node starts from the client's state
                        self.to_send[cid] = self.states[cid]
            online = self._online()
            lost = [] if online is None else [c for c in clients if self.nodes[c] not in online]
            if not lost or time.monotonic() >= deadline:
                return
            if not announced:
                announced = True
                self.experiment.reporter.phase(
                    f"waiting up to {wait:g}s for a Flower node to serve client(s) "
                    + ", ".join(map(str, lost)))
            time.sleep(1.0)

    # ---------------------------------------------------------- messages

    def _send_and_receive(self, messages: list[Message], timeout: float | None) -> list[Message]:
        """``Grid.send_and_receive``, polling for replies every 0.2 s (deployment: Flower's
        HTTP grid waits 3 s between polls, which would add 1.5 s to every round on
        average) or 0.02 s (simulation)."""
        pending = set(self.grid.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while pending:
            got = list(self.grid.pull_messages(pending))
            replies += got
            pending.difference_update(m.metadata.reply_to_message_id for m in got)
            if not pending or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(self.poll)
        return replies

    def _message(self, node: int, message_type: str, cid: int, extra: dict[str, Any],
                 payload: Any, group: str) -> Message:
        skeleton, arrays = encode(payload)
        header = ConfigRecord({**self.common, **extra, "client": cid, "payload": skeleton})
        content = RecordDict({HEADER: header, PAYLOAD: arrays})
        state = self.to_send.get(cid)
        if state is not None:  # the node loads this state instead of the one it kept
            header[STATE] = state[0]
            content[STATE] = state[1]
        return Message(content, dst_node_id=node, message_type=message_type, group_id=group,
                       ttl=self.ttl)

    def _exchange(self, message_type: str, group: str,
                  payloads: Mapping[int, tuple[dict[str, Any], Any]]
                  ) -> tuple[dict[int, Any], dict[int, str]]:
        """Send every client its message; (decoded payloads, failure reasons) by client."""
        clients = list(payloads)
        # an evaluation needs every client: wait for a node to replace an offline one
        self._refresh(clients, wait=self.options.node_wait_timeout
                      if message_type == "evaluate" else 0.0)
        online = self._online()
        failed: dict[int, str] = {}
        if message_type == "train" and online is not None:
            for cid in clients:  # no message to a node known to be gone (it cannot reply)
                if self.nodes[cid] not in online:
                    failed[cid] = (f"node {self.nodes[cid]} is offline and no other node "
                                   f"serves client {cid}")
        messages = [self._message(self.nodes[cid], message_type, cid, extra, payload, group)
                    for cid, (extra, payload) in payloads.items() if cid not in failed]
        replies = {r.metadata.src_node_id: r
                   for r in self._send_and_receive(messages, self.timeout)}
        ok: dict[int, Any] = {}
        for cid in clients:
            node = self.nodes[cid]
            reply = replies.get(node)
            if cid in failed:
                pass
            elif reply is None:
                failed[cid] = (f"node {node} did not reply within {self.timeout:g}s"
                               if self.timeout else f"node {node} did not reply")
            elif reply.has_error():
                why = cause(reply.error.reason or "")
                failed[cid] = f"node {node} error {reply.error.code}: {why}"
            else:
                try:
                    header = reply.content[HEADER]
                    if not isinstance(header, ConfigRecord):
                        raise TypeError(f"{HEADER!r} is not a ConfigRecord")
                    self._keep_state(cid, header, reply)
                    if header["status"] != "ok":
                        failed[cid] = str(header["reason"])
                    else:
                        ok[cid] = decode(field(header, "payload", str),
                                         arrays(reply.content.get(PAYLOAD)))
                except (KeyError, TypeError, ValueError, FclkitError) as exc:
                    failed[cid] = f"malformed reply from node {node}: {exc}"
            if message_type == "train":
                self.experiment.reporter.client_done(cid)
        return ok, failed

    def _keep_state(self, cid: int, header: ConfigRecord, reply: Message) -> None:
        """The client's state after the step, when the reply carries one."""
        skeleton = header.get(STATE)
        if skeleton is None:
            return
        record = arrays(reply.content.get(STATE))
        if not isinstance(skeleton, str) or record is None:
            raise ValueError("its client state is incomplete")
        self.states[cid] = (skeleton, record)
        self.to_send.pop(cid, None)  # the node now holds (and has saved) this state

    def close(self) -> None:
        """Deployment: tell every node that the run is over, so that its worker (see
        :mod:`.node_worker`) exits now rather than when idle. Best effort: a node that
        does not answer within a few seconds is left to its idle timeout."""
        if not self.deployment or not self.nodes:
            return
        messages = [self._message(node, "query", cid, {"bye": True}, None, "bye")
                    for cid, node in sorted(self.nodes.items())]
        try:
            self._send_and_receive(messages, 30.0)
        except Exception:  # noqa: BLE001 - the run's result does not depend on it
            pass

    # ----------------------------------------------------------- checkpoints

    def client_states(self) -> dict[int, Any] | None:
        """Every client's latest state (from the nodes' replies), or None when the run
        writes no checkpoints or a client's state is not known yet."""
        if not self.collect_states or any(c not in self.states for c in range(self.num_clients)):
            return None
        return {cid: decode(*self.states[cid]) for cid in range(self.num_clients)}

    def load_client_states(self, states: Mapping[int, Any]) -> None:
        """A resumed run: each client gets its state with its next message."""
        for cid, state in states.items():
            self.states[int(cid)] = self.to_send[int(cid)] = encode(state)

    # ----------------------------------------------------- ClientExecutor

    def fit(self, round_info: RoundInfo, downloads: Mapping[int, Any]
            ) -> tuple[list[Upload], list[Failure]]:
        extra = {"task": round_info.task, "round": round_info.round,
                 "rounds_per_task": round_info.rounds_per_task}
        chosen = (range(self.num_clients) if round_info.participants is None
                  else round_info.participants)  # only the round's participants train
        payloads = {cid: ({**extra, "client_last": round_info.for_client(cid).is_last_round},
                          {"download": _state(downloads.get(cid))}) for cid in chosen}
        ok, failed = self._exchange("train", f"task{round_info.task}-round{round_info.round}",
                                    payloads)
        uploads: list[Upload] = []
        failures = [Failure(cid, reason) for cid, reason in failed.items()]
        for cid, p in sorted(ok.items()):
            try:
                upload = Upload.from_state(p)
                if upload.client_id != cid:
                    raise ValueError(f"it claims to be client {upload.client_id}")
                uploads.append(upload)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                failures.append(Failure(cid, f"malformed upload: {exc}"))
        return uploads, sorted(failures, key=lambda f: f.client_id)

    def evaluate(self, task_index: int, downloads: Mapping[int, Any],
                 global_fm: Download | None) -> dict[int, dict[str, list[float]]]:
        payloads = {cid: ({"task_index": task_index},
                          {"download": _state(downloads.get(cid)), "global_fm": _state(global_fm)})
                    for cid in range(self.num_clients)}
        ok, failed = self._exchange("evaluate", f"evaluate{task_index}", payloads)
        if failed:
            when = "before the first task" if task_index < 0 else f"after task {task_index + 1}"
            raise FclkitError(
                f"could not evaluate every client {when}: "
                + "; ".join(f"client {cid}: {reason}" for cid, reason in sorted(failed.items())),
                hint="every client must be evaluated to fill the accuracy matrix")
        out: dict[int, dict[str, list[float]]] = {}
        for cid, p in sorted(ok.items()):
            try:
                out[cid] = {str(m): [float(v) for v in accs]
                            for m, accs in p["accuracies"].items()}
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise FclkitError(f"client {cid} sent malformed accuracies: {exc}") from None
        return out


def _same_causes(problems: list[str]) -> str:
    """``node N: cause`` lines, each cause once (many nodes often fail alike)."""
    by_cause: dict[str, list[str]] = {}
    for problem in problems:
        node, _, why = problem.partition(": ")
        by_cause.setdefault(why, []).append(node)
    return "; ".join(f"{why} ({', '.join(nodes) if len(nodes) < 4 else f'{len(nodes)} nodes'})"
                     for why, nodes in by_cause.items())
