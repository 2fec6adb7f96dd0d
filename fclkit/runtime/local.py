"""The ``local`` engine: every client runs in this process, one after the other.

Registered through the ``fclkit`` entry-point group like every other plugin.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..hookspecs import hookimpl
from ..interfaces import ClientExecutor, Engine
from ..messages import Failure, RoundInfo, Upload


class LocalExecutor(ClientExecutor):
    """Keeps live clients in memory; a client that raises becomes a recorded failure."""

    def __init__(self, experiment: Any) -> None:
        self.experiment = experiment
        self.reporter = experiment.reporter
        self.clients = {cid: experiment.build_client(cid)
                        for cid in range(experiment.config.clients)}
        self.last_error: BaseException | None = None

    def fit(self, round_info: RoundInfo, downloads: Mapping[int, Any]
            ) -> tuple[list[Upload], list[Failure]]:
        uploads: list[Upload] = []
        failures: list[Failure] = []
        for cid, client in self.clients.items():
            try:
                uploads.append(client.fit(round_info, downloads.get(cid)))
            except Exception as exc:  # one client's failure must not stop the round
                self.last_error = exc
                failures.append(Failure(cid, f"{type(exc).__name__}: {exc}"))
            self.reporter.client_done(cid)
        return uploads, failures

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
