"""The ``local`` engine: every client runs in this process, one after the other."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fclkit.interfaces import ClientExecutor, Engine, EngineHost
from fclkit.messages import Download, Failure, RoundInfo, Upload


class LocalExecutor(ClientExecutor):
    """Keeps live clients in memory and runs them one after the other.

    Each round runs under the core's client guard (``Client.fit_guarded``): a client
    that raises, takes longer than ``client_timeout``, or whose update is rejected
    (e.g. NaN weights) is rolled back to its state before the round and takes part
    again, cleanly, in the next one. Only the round's participants
    (``RoundInfo.participants``) train; the others are left untouched.
    """

    def __init__(self, host: EngineHost) -> None:
        self.host = host
        self.reporter = host.reporter
        self.clients = host.build_clients(range(host.config.clients))
        self.timeout = host.config.client_timeout

    def fit(self, round_info: RoundInfo, downloads: Mapping[int, Any]
            ) -> tuple[list[Upload], list[Failure]]:
        uploads: list[Upload] = []
        failures: list[Failure] = []
        chosen = (self.clients if round_info.participants is None
                  else round_info.participants)
        for cid in chosen:
            client = self.clients[cid]
            outcome = client.fit_guarded(round_info.for_client(cid), downloads.get(cid),
                                         timeout=self.timeout)
            if outcome.failure is not None:
                failures.append(outcome.failure)
            elif outcome.upload is not None:  # the core validates it again and records why
                uploads.append(outcome.upload)
            self.reporter.client_done(cid)
        return uploads, failures

    def client_states(self) -> dict[int, Any]:
        return {cid: client.state_dict() for cid, client in self.clients.items()}

    def load_client_states(self, states: Mapping[int, Any]) -> None:
        for cid, state in states.items():
            self.clients[cid].load_state_dict(state)

    def evaluate(self, task_index: int, downloads: Mapping[int, Any],
                 global_fm: Download | None) -> dict[int, dict[str, list[float]]]:
        from fclkit.runtime import EvaluationMemo

        out = {}
        memo = EvaluationMemo()  # clients with identical models are evaluated once
        for cid, client in self.clients.items():
            client.apply(downloads.get(cid))
            out[cid] = client.evaluate(global_fm, memo)
        return out


class LocalEngine(Engine):
    name = "local"
    description = "runs every client in this process (default)"

    def run(self, host: EngineHost) -> None:
        executor = LocalExecutor(host)
        try:
            host.run_loop(executor)
        finally:
            executor.close()
