"""``FlowerExecutor``: the server side of a round, as Flower messages through a ``Grid``."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from flwr.app import DEFAULT_TTL, ConfigRecord, Message, RecordDict

from fclkit.errors import FclkitError
from fclkit.interfaces import ClientExecutor
from fclkit.messages import Download, Failure, RoundInfo, Upload

from .codec import decode, encode
from .protocol import HEADER, PAYLOAD, arrays, field

#: seconds between two polls for replies
POLL_SECONDS = 0.2


def _state(download: Download | None) -> dict[str, Any] | None:
    return None if download is None else download.to_state()


class FlowerExecutor(ClientExecutor):
    """Sends each client's step to the node serving it and turns replies into results.

    Nodes are found once, at the start: every node the grid knows is asked which
    client it serves (its ``partition-id``). A node that errors, replies with a
    failure, or does not reply within ``reply_timeout`` makes its client a
    :class:`~fclkit.messages.Failure` for that round, with the reason.
    """

    def __init__(self, grid: Any, experiment: Any, options: Any, *, deployment: bool) -> None:
        self.grid = grid
        self.experiment = experiment
        self.options = options
        config = experiment.config
        client_config = (config.evolve(device=options.client_device)
                         if options.client_device else config)
        self.common = {
            "config": json.dumps(client_config.to_dict()),
            "components": json.dumps(experiment.component_refs()),
            "threads": options.client_threads or config.threads or 1,
            "prune": deployment,
            "client_timeout": float(config.client_timeout),
        }
        self.num_clients = config.clients
        self.timeout = options.reply_timeout or None
        self.ttl = max(float(options.reply_timeout), 60.0) if options.reply_timeout else DEFAULT_TTL
        self.asked: set[int] = set()
        self.nodes: dict[int, int] = {}
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
                problems.append(f"node {node}: {reply.error.reason}")
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
                    + (": " + "; ".join(problems) if problems else "") + ")",
                    hint="start one SuperNode per client with --node-config "
                    "'partition-id=K num-partitions=N', or raise node_wait_timeout")
            time.sleep(0.2)

    def _refresh(self) -> None:
        """A node that joined since (e.g. a restarted SuperNode) takes over its client."""
        found, problems = self._ask(min(60.0, self.options.node_wait_timeout))
        for problem in problems:
            self.experiment.reporter.warn(f"Flower {problem}")
        for node, cid in found:
            if self.nodes.get(cid) != node:
                self.experiment.reporter.warn(
                    f"client {cid} is now served by Flower node {node} "
                    f"(was node {self.nodes.get(cid)})")
                self.nodes[cid] = node

    # ---------------------------------------------------------- messages

    def _send_and_receive(self, messages: list[Message], timeout: float | None) -> list[Message]:
        """``Grid.send_and_receive``, polling for replies every 0.2 s (Flower's HTTP grid
        waits 3 s between polls, which would add 1.5 s to every round on average)."""
        pending = set(self.grid.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while pending:
            got = list(self.grid.pull_messages(pending))
            replies += got
            pending.difference_update(m.metadata.reply_to_message_id for m in got)
            if not pending or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(POLL_SECONDS)
        return replies

    def _message(self, node: int, message_type: str, cid: int, extra: dict[str, Any],
                 payload: Any, group: str) -> Message:
        skeleton, arrays = encode(payload)
        header = ConfigRecord({**self.common, **extra, "client": cid, "payload": skeleton})
        return Message(RecordDict({HEADER: header, PAYLOAD: arrays}), dst_node_id=node,
                       message_type=message_type, group_id=group, ttl=self.ttl)

    def _exchange(self, message_type: str, group: str,
                  payloads: Mapping[int, tuple[dict[str, Any], Any]]
                  ) -> tuple[dict[int, Any], dict[int, str]]:
        """Send every client its message; (decoded payloads, failure reasons) by client."""
        self._refresh()
        messages = [self._message(self.nodes[cid], message_type, cid, extra, payload, group)
                    for cid, (extra, payload) in payloads.items()]
        replies = {r.metadata.src_node_id: r
                   for r in self._send_and_receive(messages, self.timeout)}
        ok: dict[int, Any] = {}
        failed: dict[int, str] = {}
        for cid in payloads:
            node = self.nodes[cid]
            reply = replies.get(node)
            if reply is None:
                failed[cid] = (f"node {node} did not reply within {self.timeout:g}s"
                               if self.timeout else f"node {node} did not reply")
            elif reply.has_error():
                failed[cid] = f"node {node} error {reply.error.code}: {reply.error.reason}"
            else:
                try:
                    header = reply.content[HEADER]
                    if not isinstance(header, ConfigRecord):
                        raise TypeError(f"{HEADER!r} is not a ConfigRecord")
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

    # ----------------------------------------------------- ClientExecutor

    def fit(self, round_info: RoundInfo, downloads: Mapping[int, Any]
            ) -> tuple[list[Upload], list[Failure]]:
        extra = {"task": round_info.task, "round": round_info.round,
                 "rounds_per_task": round_info.rounds_per_task}
        payloads = {cid: (extra, {"download": _state(downloads.get(cid))})
                    for cid in range(self.num_clients)}
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
