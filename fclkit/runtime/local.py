"""The ``local`` engine: every client runs in this process, one after the other.

Registered through the ``fclkit`` entry-point group like every other plugin.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from typing import Any

from ..hookspecs import hookimpl
from ..interfaces import ClientExecutor, Engine
from ..messages import Failure, RoundInfo, Upload


class LocalExecutor(ClientExecutor):
    """Keeps live clients in memory, runs them one after the other.

    A client that raises in a round, takes longer than ``client_timeout``, or
    whose update the core's validator rejects (e.g. NaN weights) is rolled back
    to its state before the round (so it takes part again, cleanly, in the next
    round); the first two become failures here, the third is recorded by the
    core. This engine cannot interrupt a running Python function: a slow client
    is detected when its round returns, and its update is then discarded.
    """

    def __init__(self, experiment: Any) -> None:
        self.experiment = experiment
        self.reporter = experiment.reporter
        self.clients = {cid: experiment.build_client(cid)
                        for cid in range(experiment.config.clients)}
        self.last_error: BaseException | None = None
        self.timeout = experiment.config.client_timeout

    def fit(self, round_info: RoundInfo, downloads: Mapping[int, Any]
            ) -> tuple[list[Upload], list[Failure]]:
        uploads: list[Upload] = []
        failures: list[Failure] = []
        for cid, client in self.clients.items():
            before = self._snapshot(client)
            started = time.perf_counter()
            try:
                upload = client.fit(round_info, downloads.get(cid))
            except Exception as exc:  # one client's failure must not stop the round
                self.last_error = exc
                failures.append(Failure(cid, f"{type(exc).__name__}: {exc}"))
                self._roll_back(client, before, downloads.get(cid))
            else:
                took = time.perf_counter() - started
                if self.timeout and took > self.timeout:
                    failures.append(Failure(
                        cid, f"exceeded the time limit of {self.timeout:g}s (took {took:.1f}s)"))
                    self._roll_back(client, before, downloads.get(cid))
                else:
                    uploads.append(upload)  # the core validates it again and records why
                    if self.experiment.validator.check(upload) is not None:
                        self._roll_back(client, before, downloads.get(cid))
            self.reporter.client_done(cid)
        return uploads, failures

    @staticmethod
    def _snapshot(client: Any) -> dict[str, Any]:
        """The client's state before a round. ``Client.state_dict`` already copies the
        model; the strategy's state may hold live tensors (replay buffer, EWC
        importances, optimiser moments), so that part is deep-copied."""
        state = client.state_dict()
        state["strategy"] = copy.deepcopy(state["strategy"])
        return state

    @staticmethod
    def _roll_back(client: Any, before: dict[str, Any], download: Any) -> None:
        client.load_state_dict(before)
        client.apply(download)

    def client_states(self) -> dict[int, Any]:
        return {cid: client.state_dict() for cid, client in self.clients.items()}

    def load_client_states(self, states: Mapping[int, Any]) -> None:
        for cid, state in states.items():
            self.clients[cid].load_state_dict(state)

    def evaluate(self, task_index: int, downloads: Mapping[int, Any],
                 global_fm_state: Mapping[str, Any] | None) -> dict[int, dict[str, list[float]]]:
        out = {}
        for cid, client in self.clients.items():
            client.apply(downloads.get(cid))
            out[cid] = client.evaluate(global_fm_state)
        return out


class LocalEngine(Engine):
    name = "local"
    description = "runs every client in this process (default)"

    def run(self, experiment: Any) -> None:
        executor = LocalExecutor(experiment)
        try:
            experiment.run_loop(executor)
        finally:
            executor.close()


@hookimpl
def register_engines(register):
    register(LocalEngine)
