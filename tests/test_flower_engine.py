"""The ``flower`` engine gives the same numbers as the ``local`` engine.

* in process (a fake Grid that hands messages straight to the ClientApp): the full
  message path, failures and roll-back, deployment-style data pruning -- no Ray;
* simulation (Flower's Simulation Runtime on Ray): EWC and replay, whose strategy
  state must survive between rounds, give the local engine's accuracy matrices; a
  run killed with SIGKILL (its Ray processes too) after its first checkpoint and
  resumed gives the uninterrupted run's, started from a folder holding ``fclkit/``;
* deployment: a SuperLink and two SuperNodes as real processes on 127.0.0.1, each
  node serving one client through its worker process, which keeps the prepared
  experiment between the per-message ``flwr-clientapp`` processes (and, in process,
  the relay to a real worker process and its end with the run);
* without flwr, choosing the engine stops at once with a one-line error.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

import fclkit
import fclkit_builtins.flower
from fclkit.interfaces import ContinualStrategy, Engine, TrainReport
from fclkit_builtins.flower.engine import FlowerEngine
from fclkit_builtins.flower.loopback import free_port, stop_process_groups, wait_for_port

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


def _flower_installed() -> bool:
    try:
        return importlib.util.find_spec("flwr") is not None
    except (ImportError, ValueError):
        return False


needs_flower = pytest.mark.skipif(
    not _flower_installed(), reason='Flower (flwr) is not installed: pip install "fclkit[flower]"')

TINY = dict(fusion="fedavg", clients=2, tasks=2, rounds=2, epochs=1, threads=1, seed=0)


def _env(**extra: str) -> dict[str, str]:
    paths = [str(ROOT), str(ROOT / "plugins"), str(TESTS), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p),
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **extra}


# ------------------------------------------------------------ test components


class MomentumSGD(ContinualStrategy):
    """Plain PyTorch SGD with momentum whose optimizer survives rounds (it is state)."""

    name = "test-momentum-sgd"
    description = "test strategy: SGD with momentum kept across rounds"

    def __init__(self, model: Any, options: Any, context: Any) -> None:
        import torch

        super().__init__(model, options, context)
        self.optimizer = torch.optim.SGD(model.parameters(), lr=context.lr, momentum=0.9)
        self.rounds = 0

    def train_round(self, task, *, round_info, epochs, extra_losses: Sequence = ()):
        import torch

        self.model.train()
        total, steps = 0.0, 0
        for _ in range(epochs):
            perm = torch.randperm(task.num_train)
            for start in range(0, task.num_train, self.context.batch_size):
                idx = perm[start:start + self.context.batch_size]
                loss = torch.nn.functional.cross_entropy(self.model(task.x_train[idx]),
                                                         task.y_train[idx])
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()
                total, steps = total + loss.item(), steps + 1
        self.rounds += 1
        return TrainReport(num_examples=task.num_train, loss=total / max(steps, 1), steps=steps)

    def state_dict(self) -> dict[str, Any]:
        opt = self.optimizer.state_dict()
        return {"rounds": self.rounds, "param_groups": opt["param_groups"],
                "state": {str(k): v for k, v in opt["state"].items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.rounds = int(state["rounds"])
        self.optimizer.load_state_dict({"param_groups": state["param_groups"],
                                        "state": {int(k): v for k, v in state["state"].items()}})


class FailingSGD(MomentumSGD):
    """Client 1 raises in the second round of the first task (after changing its model)."""

    name = "test-failing-sgd"
    client_id = -1  # set by the test (see _tell_strategies_their_client)

    def train_round(self, task, *, round_info, epochs, extra_losses: Sequence = ()):
        report = super().train_round(task, round_info=round_info, epochs=epochs)
        if (round_info.task, round_info.round, self.client_id) == (0, 1, 1):
            raise RuntimeError("disk full on client 1")
        return report


class NaNSGD(MomentumSGD):
    """Client 1's weights turn NaN in the second round of the first task."""

    name = "test-nan-sgd"
    client_id = -1  # set by the test (see _tell_strategies_their_client)

    def train_round(self, task, *, round_info, epochs, extra_losses: Sequence = ()):
        import torch

        report = super().train_round(task, round_info=round_info, epochs=epochs)
        if (round_info.task, round_info.round, self.client_id) == (0, 1, 1):
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("nan"))
        return report


class ServerKilled(BaseException):
    """The server process 'dies' (what SIGKILL would do, without killing pytest)."""


class InProcessGrid:
    """A Flower Grid whose nodes run the ClientApp in this process (no Ray, no network).

    ``silent`` maps a message type to clients whose node never answers it;
    ``restart_after`` names a message group after which client 1's node is
    replaced by a new node with an empty ``context.state`` (a restarted SuperNode);
    ``crash_at`` names a message group whose sending kills the server (ServerKilled).
    """

    def __init__(self, client_app: Any, clients: int,
                 silent: Mapping[str, Sequence[int]] | None = None,
                 state_dir: Path | None = None, restart_after: str = "",
                 crash_at: str = "") -> None:
        from flwr.supercore.task_identity import TaskIdentity

        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
        self.app = client_app
        self.state_dir = state_dir
        self.contexts = {100 + k: self._context(100 + k, k) for k in range(clients)}
        self.silent = {kind: {100 + k for k in ks} for kind, ks in (silent or {}).items()}
        self.restart_after = restart_after
        self.crash_at = crash_at
        self.sent: list[Any] = []
        self.replies: dict[str, Any] = {}

    def _context(self, node: int, client: int) -> Any:
        from flwr.app import Context, RecordDict

        config: dict[str, Any] = {"partition-id": client}
        if self.state_dir is not None:
            config["fclkit-state-dir"] = str(self.state_dir / f"node{node}")
        return Context(run_id=1, node_id=node, node_config=config, state=RecordDict(),
                       run_config={})

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def push_messages(self, messages: Any) -> list[str]:
        ids = []
        messages = list(messages)
        if self.crash_at and messages and messages[0].metadata.group_id == self.crash_at:
            raise ServerKilled(self.crash_at)
        for message in messages:
            self.sent.append(message)
            message_id = f"m{len(self.sent)}"
            message.metadata.__dict__["_message_id"] = message_id
            ids.append(message_id)
            node = message.metadata.dst_node_id
            if node in self.silent.get(message.metadata.message_type, ()):
                continue  # this node never answers this kind of message
            if node in self.contexts:
                self.replies[message_id] = self.app(message, self.contexts[node])
        if self.restart_after and self.sent[-1].metadata.group_id == self.restart_after:
            old = self.contexts.pop(101)  # client 1's SuperNode restarts: new id, empty state
            self.contexts[201] = self._context(201, 1)
            if self.state_dir is not None:  # ... on the same machine, with the same folder
                self.contexts[201].node_config["fclkit-state-dir"] = \
                    old.node_config["fclkit-state-dir"]
        return ids

    def pull_messages(self, message_ids: Any) -> list[Any]:
        return [self.replies.pop(i) for i in list(message_ids) if i in self.replies]


class InProcessFlower(Engine):
    """The flower engine's executor over an :class:`InProcessGrid`."""

    name = "test-flower-inprocess"
    Options = FlowerEngine.Options
    silent: dict[str, tuple[int, ...]] = {}
    state_dir: Path | None = None
    restart_after = ""
    crash_at = ""
    last_grid: Any = None

    def run(self, experiment: Any) -> None:
        from fclkit_builtins.flower.client_app import client_app
        from fclkit_builtins.flower.executor import FlowerExecutor

        cls = type(self)
        grid = InProcessGrid(client_app, experiment.config.clients, cls.silent, cls.state_dir,
                             cls.restart_after, cls.crash_at)
        type(self).last_grid = grid
        experiment.run_loop(FlowerExecutor(grid, experiment, self.options,
                                           deployment=self.options.mode == "deployment"))


def _run(config: fclkit.ExperimentConfig, **kwargs: Any) -> Any:
    kwargs.setdefault("write_results", False)
    return fclkit.run(config, plugins=[fclkit_builtins.flower], **kwargs)


# -------------------------------------------------------------- import / errors


def test_plugin_import_is_light():
    code = ("import sys, fclkit_builtins.flower\n"
            "print(sorted(m for m in ('flwr', 'ray', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True,
                         text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_missing_flower_stops_at_once_with_one_line(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        sys.modules["flwr"] = None  # as if Flower were not installed
        import fclkit, fclkit_builtins.flower
        config = fclkit.ExperimentConfig(engine="flower", clients=2, tasks=2,
                                         output={str(tmp_path / "runs")!r})
        try:
            fclkit.run(config, plugins=[fclkit_builtins.flower])
        except fclkit.FclkitError as exc:
            print(repr(str(exc)))
            print("stream" if "sklearn" in sys.modules else "nothing loaded")
    """)
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True,
                         text=True, timeout=60)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2, out.stdout + out.stderr
    message = ast.literal_eval(lines[0])
    assert "\n" not in message and 'pip install "fclkit[flower]"' in message
    assert lines[1] == "nothing loaded"  # stopped before the benchmark was loaded
    assert not (tmp_path / "runs").exists()


@needs_flower
def test_flower_engine_is_registered_with_documented_options():
    import attrs

    from fclkit.plugins import build_registry

    entry = build_registry(extra_plugins=[fclkit_builtins.flower]).get("engine", "flower")
    fields = attrs.fields(entry.cls.Options)
    assert {"mode", "num_cpus_per_client", "num_gpus_per_client", "superlink"} <= {
        a.name for a in fields}
    assert all(a.metadata.get("help") for a in fields)
    with pytest.raises(fclkit.ConfigError, match="mode"):
        entry.cls.Options(mode="cluster")


@needs_flower
def test_codec_round_trips_nested_states_exactly():
    import torch

    from fclkit_builtins.flower.codec import decode, encode

    state = {"w": torch.randn(3, 4), "steps": [torch.arange(5), {"h": torch.randn(2).bfloat16(),
                                                                    "lr": 0.5, "none": None}],
             "flag": torch.tensor(True), "empty": torch.zeros(0, 3)}
    back = decode(*encode(state))
    assert back["steps"][1]["lr"] == 0.5 and back["steps"][1]["none"] is None
    for a, b in [(state["w"], back["w"]), (state["steps"][0], back["steps"][0]),
                 (state["steps"][1]["h"], back["steps"][1]["h"]),
                 (state["flag"], back["flag"]), (state["empty"], back["empty"])]:
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


# ------------------------------------------------------------------ in process


@needs_flower
def test_in_process_flower_matches_local_and_prunes_other_clients_data():
    config = fclkit.ExperimentConfig(cl="test-momentum-sgd", **TINY)
    parts = [MomentumSGD, InProcessFlower]
    local = _run(config, components=parts)
    flower = _run(config.evolve(engine="test-flower-inprocess"), components=parts)
    assert flower.metrics["per_client"] == local.metrics["per_client"]

    pruned = _run(config.evolve(engine="test-flower-inprocess",
                                engine_options={"mode": "deployment"}), components=parts)
    assert pruned.metrics["per_client"] == local.metrics["per_client"]
    from fclkit_builtins.flower.client_app import _EXPERIMENTS

    pruned_nodes = [e for e in _EXPERIMENTS.values() if e.server is None]
    assert len(pruned_nodes) == 2
    for e in pruned_nodes:  # each node holds only its own client's data
        assert [sum(t.num_train for t in cs.tasks) > 0 for cs in e.stream.clients].count(True) == 1

    grid = InProcessFlower.last_grid
    kinds = [m.metadata.message_type for m in grid.sent]
    assert kinds.count("train") == 2 * 2 * 2 and kinds.count("evaluate") == 3 * 2
    state = grid.contexts[100].state
    assert {"fclkit.client", "fclkit.client.arrays"} <= set(state.keys())


def _local_and_flower(monkeypatch: Any, strategy: type) -> tuple[Any, Any]:
    """The same run of ``strategy`` (told its client id) on the local and the Flower engine."""
    from fclkit.runtime.experiment import Experiment

    build_client = Experiment.build_client

    def _tell_strategies_their_client(self, cid):
        client = build_client(self, cid)
        client.strategy.client_id = cid
        return client

    monkeypatch.setattr(Experiment, "build_client", _tell_strategies_their_client)
    config = fclkit.ExperimentConfig(cl=strategy.name, **TINY)
    parts = [strategy, InProcessFlower]
    local = _run(config, components=parts)
    return local, _run(config.evolve(engine="test-flower-inprocess"), components=parts)


@needs_flower
def test_a_failing_client_is_recorded_and_rolled_back_like_local(monkeypatch):
    local, flower = _local_and_flower(monkeypatch, FailingSGD)
    assert [f["client"] for f in flower.metrics["failures"]] == [1]
    assert "disk full on client 1" in flower.metrics["failures"][0]["reason"]
    assert flower.metrics["failures"] == local.metrics["failures"]
    assert flower.metrics["per_client"] == local.metrics["per_client"]


@needs_flower
def test_a_node_rolls_back_a_rejected_update_like_local(monkeypatch):
    """The node runs the core's client guard: a NaN update is rejected and the client
    rolled back there, so the rest of the run is the local engine's."""
    local, flower = _local_and_flower(monkeypatch, NaNSGD)
    assert [f["client"] for f in flower.metrics["failures"]] == [1]
    assert "non-finite" in flower.metrics["failures"][0]["reason"]
    assert flower.metrics["failures"] == local.metrics["failures"]
    assert flower.metrics["per_client"] == local.metrics["per_client"]


@needs_flower
def test_a_node_that_does_not_reply_is_a_failure(monkeypatch):
    config = fclkit.ExperimentConfig(cl="test-momentum-sgd", **TINY)
    parts = [MomentumSGD, InProcessFlower]
    config = config.evolve(engine="test-flower-inprocess", engine_options={"reply_timeout": 0.3})
    monkeypatch.setattr(InProcessFlower, "silent", {"train": (1,)})
    result = _run(config, components=parts)
    failures = result.metrics["failures"]
    assert [f["client"] for f in failures] == [1] * 4  # every round; the others go on
    assert all("did not reply within 0.3s" in f["reason"] for f in failures)

    # without every client's evaluation there is no accuracy matrix: the run stops
    monkeypatch.setattr(InProcessFlower, "silent", {"evaluate": (0,)})
    with pytest.raises(fclkit.FclkitError, match="could not evaluate every client before"):
        _run(config, components=parts)


@needs_flower
def test_a_restarted_node_continues_from_its_state_folder(monkeypatch, tmp_path):
    config = fclkit.ExperimentConfig(cl="test-momentum-sgd", **TINY)
    parts = [MomentumSGD, InProcessFlower]
    local = _run(config, components=parts)
    monkeypatch.setattr(InProcessFlower, "state_dir", tmp_path)
    monkeypatch.setattr(InProcessFlower, "restart_after", "task0-round1")
    flower = _run(config.evolve(engine="test-flower-inprocess"), components=parts)
    assert flower.metrics["failures"] == []
    assert flower.metrics["per_client"] == local.metrics["per_client"]
    assert 201 in InProcessFlower.last_grid.contexts  # the new node served client 1


@needs_flower
@pytest.mark.parametrize("cl", ["ewc", "der", "si"])
def test_clients_kept_by_several_processes_give_the_local_accuracies(monkeypatch, cl):
    """As in a simulation, where any Ray actor serves any client's message: a process's
    kept client is used as it is when it holds the node's state, loaded with the node's
    state when another process served the client since, and built when none is kept --
    and every mix gives the local engine's numbers (Avalanche strategies, whose state
    goes beyond the weights)."""
    import random
    from collections import OrderedDict

    import fclkit_builtins.flower.client_app as app
    from fclkit.runtime.experiment import Experiment

    config = fclkit.ExperimentConfig(cl=cl, **TINY)
    local = _run(config)
    processes = [OrderedDict(), OrderedDict(), OrderedDict()]
    pick = random.Random(0)
    serve, build = app._serve, Experiment.build_client
    built = []

    def in_some_process(message, context, step):
        monkeypatch.setattr(app, "_CLIENTS", pick.choice(processes))
        return serve(message, context, step)

    def counted(self, cid):
        built.append(cid)
        return build(self, cid)

    monkeypatch.setattr(app, "_serve", in_some_process)
    monkeypatch.setattr(Experiment, "build_client", counted)
    flower = _run(config.evolve(engine="test-flower-inprocess"), components=[InProcessFlower])
    assert flower.metrics["per_client"] == local.metrics["per_client"]
    messages = (1 + 2) * 2 + 2 * 2 * 2  # evaluations and training rounds of both clients
    assert 2 < len(built) <= 2 * len(processes) < messages  # kept clients were reused


class InProcessFlowerClosing(InProcessFlower):
    """:class:`InProcessFlower` that ends the run as the deployment ServerApp does."""

    name = "test-flower-inprocess-closing"

    def run(self, experiment: Any) -> None:
        from fclkit_builtins.flower.client_app import client_app
        from fclkit_builtins.flower.executor import FlowerExecutor

        grid = InProcessGrid(client_app, experiment.config.clients)
        type(self).last_grid = grid
        executor = FlowerExecutor(grid, experiment, self.options, deployment=True)
        try:
            experiment.run_loop(executor)
        finally:
            executor.close()


@needs_flower
def test_deployment_nodes_serve_through_a_worker_that_keeps_the_experiment(monkeypatch):
    """A per-message ClientApp process relays to the node's worker process (a real
    one, over a Unix socket), which gives the local engine's numbers and exits when
    the run ends."""
    import fclkit_builtins.flower.node_worker as node_worker

    if not hasattr(__import__("socket"), "AF_UNIX"):
        pytest.skip("no Unix sockets here: nodes serve every message themselves")
    config = fclkit.ExperimentConfig(cl="test-momentum-sgd", **TINY)
    parts = [MomentumSGD, InProcessFlowerClosing]
    local = _run(config, components=[MomentumSGD])
    relayed, paths = [], set()
    relay = node_worker.relay

    def counted(content, context, step):
        paths.add(node_worker.socket_path(content, context))
        reply = relay(content, context, step)
        relayed.append(reply is not None)
        return reply

    # as in a flwr-clientapp process: deployment messages go to the node's worker
    monkeypatch.setattr(node_worker, "wanted", lambda content, context: True)
    monkeypatch.setattr(node_worker, "relay", counted)
    flower = _run(config.evolve(engine="test-flower-inprocess-closing",
                                engine_options={"mode": "deployment"}), components=parts)
    assert flower.metrics["per_client"] == local.metrics["per_client"]
    assert relayed and all(relayed)  # every step was served by a worker
    assert len(paths) == 2  # one worker per node
    deadline = time.monotonic() + 10
    while any(p.exists() for p in paths) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(p.exists() for p in paths)  # told at the end of the run, they exited


# ------------------------------------------------------------------ simulation


SIMULATION = {"num_cpus_per_client": 1.0, "ray_num_cpus": 2}


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """Local and Flower-simulation runs of EWC and replay (one Ray start-up each)."""
    if not _flower_installed():
        pytest.skip('Flower (flwr) is not installed: pip install "fclkit[flower]"')
    mp = pytest.MonkeyPatch()
    mp.setenv("FCLKIT_LOAD_PLUGINS", "")
    out = str(tmp_path_factory.mktemp("flower") / "runs")
    sim = SIMULATION
    runs: dict[str, Any] = {}
    timings: dict[str, float] = {}
    try:
        for cl, options in [("ewc", {}), ("replay", {"mem_size": 50})]:
            config = fclkit.ExperimentConfig(cl=cl, cl_options=options, output=out, **TINY)
            t0 = time.perf_counter()
            runs[f"local-{cl}"] = _run(config)
            timings[f"local-{cl}"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            runs[f"flower-{cl}"] = _run(config.evolve(engine="flower", engine_options=sim),
                                        write_results=cl == "ewc")
            timings[f"flower-{cl}"] = time.perf_counter() - t0
        runs["local-naive"] = _run(fclkit.ExperimentConfig(cl="naive", output=out, **TINY))
    finally:
        mp.undo()
    print("flower simulation timings (s):", json.dumps(timings))
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("cl", ["ewc", "replay"])
def test_simulation_gives_the_local_accuracy_matrices(simulated, cl):
    import math

    local, flower = simulated[f"local-{cl}"], simulated[f"flower-{cl}"]
    for cid in ("0", "1"):
        a = local.metrics["per_client"][cid]["small"]
        b = flower.metrics["per_client"][cid]["small"]
        for row_a, row_b in zip(a["accuracy_matrix"], b["accuracy_matrix"], strict=True):
            assert all(math.isclose(x, y, abs_tol=1e-9) for x, y in zip(row_a, row_b,
                                                                          strict=True))
        assert a["initial_accuracy"] == b["initial_accuracy"]
    # the strategy's state matters here, so equal matrices mean it survived the rounds
    naive = simulated["local-naive"].accuracy_matrix()
    assert local.accuracy_matrix() != naive
    assert flower.metrics["communication"] == local.metrics["communication"]


@pytest.mark.slow
def test_simulation_writes_a_complete_results_folder(simulated):
    run_dir = simulated["flower-ewc"].run_dir
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["complete"] is True and metrics["failures"] == []
    rows = (run_dir / "rounds.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 2 * 2 * 2  # header + tasks x rounds x clients
    info = json.loads((run_dir / "run.json").read_text())
    assert any(c["name"] == "flower" for c in info["components"])


def _session(sid: int) -> list[int]:
    """Processes still running in session ``sid`` (a killed run's Ray processes)."""
    alive = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid and \
                        "Z" not in (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]:
                    alive.append(int(entry.name))
            except (OSError, IndexError):
                pass
    return alive


def _no_processes_left(sid: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while _session(sid) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = _session(sid)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not left, f"processes left behind: {left}"


def _cli_in_session(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "fclkit"), *args], cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "FCLKIT_LOAD_PLUGINS": ""})


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_simulation_killed_with_sigkill_resumes_to_the_same_accuracies(simulated, tmp_path):
    """`fclkit run --engine flower` killed with SIGKILL (Ray's processes with it) after its
    first checkpoint, then `fclkit run --resume`: the uninterrupted Flower run's matrices.
    Both start in a folder holding a folder named `fclkit` (the parent of a clone), which
    Ray's workers must not import instead of the installed package."""
    from fclkit.config import dump_toml

    work = tmp_path / "work"
    (work / "fclkit").mkdir(parents=True)
    config = fclkit.ExperimentConfig(cl="ewc", engine="flower", engine_options=SIMULATION,
                                     output=str(tmp_path / "runs"), name="killed",
                                     loggers=("none",), **TINY)
    (work / "exp.toml").write_text(dump_toml(config))
    run_dir = tmp_path / "runs" / "killed"
    latest = run_dir / "checkpoint" / "latest.json"
    t0 = time.monotonic()
    proc = _cli_in_session(["run", "-q", "--config", "exp.toml"], work)
    try:
        while not latest.exists() and proc.poll() is None and time.monotonic() - t0 < 300:
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before it was killed: {proc.stderr.read()}"
        assert latest.exists(), "no checkpoint after 300s"
        os.killpg(proc.pid, signal.SIGKILL)  # the run and every Ray process it started
        proc.wait(timeout=30)
        _no_processes_left(proc.pid)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    killed_at = json.loads(latest.read_text())["step"]
    assert killed_at < 3 and not (run_dir / "metrics.json").exists()
    t1 = time.monotonic()
    resumed = _cli_in_session(["run", "-q", "--resume", str(run_dir)], work)
    try:
        _, stderr = resumed.communicate(timeout=300)
    finally:
        if resumed.poll() is None:
            os.killpg(resumed.pid, signal.SIGKILL)
            resumed.wait(timeout=30)
    print(f"killed after step {killed_at} at {t1 - t0:.0f}s; resumed in "
          f"{time.monotonic() - t1:.0f}s")
    assert resumed.returncode == 0, stderr
    _no_processes_left(resumed.pid)
    assert "hookimpl" not in stderr
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished" and len(info["resumed"]) == 1
    metrics = json.loads((run_dir / "metrics.json").read_text())
    clean = json.loads((simulated["flower-ewc"].run_dir / "metrics.json").read_text())
    for cid in ("0", "1"):
        assert metrics["per_client"][cid]["small"]["accuracy_matrix"] == \
            clean["per_client"][cid]["small"]["accuracy_matrix"]
    assert metrics["per_client"] == clean["per_client"]
    assert metrics["communication"] == clean["communication"]


# ------------------------------------------------------------------ deployment


@pytest.fixture
def flower_federation(tmp_path):
    """A SuperLink and two SuperNodes (client 0 and client 1) as separate processes."""
    if not _flower_installed() or not (BIN / "flower-superlink").exists():
        pytest.skip('Flower (flwr) is not installed: pip install "fclkit[flower]"')
    link_port = free_port()
    env = _env(FCLKIT_LOAD_PLUGINS="", FLWR_SUPEREXEC_TASK_POLL_INTERVAL="0.2")
    procs: list[subprocess.Popen] = []
    logs: list[Path] = []

    def start(name: str, args: list[str]) -> subprocess.Popen:
        home = tmp_path / f"home-{name}"
        home.mkdir()
        log = tmp_path / f"{name}.log"
        logs.append(log)
        with open(log, "wb") as fh:
            proc = subprocess.Popen([str(BIN / args[0]), *args[1:]], cwd=tmp_path,
                                    env={**env, "FLWR_HOME": str(home)}, stdout=fh,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(proc)
        return proc

    try:
        link = start("superlink", ["flower-superlink", "--insecure", "--host", "127.0.0.1",
                                   "--port", str(link_port),
                                   "--disable-runtime-dependency-installation"])
        wait_for_port(link_port, link, timeout=60)
        for k in range(2):
            start(f"node{k}", [
                "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{link_port}",
                "--port", str(free_port()), "--max-wait-time", "60",
                "--node-config",
                f"partition-id={k} num-partitions=2 fclkit-state-dir=\"{tmp_path / f'state{k}'}\""])
        yield {"superlink": f"127.0.0.1:{link_port}", "dir": tmp_path, "logs": logs}
    finally:  # the whole process groups: SuperExec and app processes too
        stop_process_groups(procs)


@pytest.mark.slow
def test_deployment_on_a_superlink_and_two_supernodes(flower_federation, monkeypatch):
    from fclkit.serialization import load_state

    monkeypatch.setenv("FCLKIT_LOAD_PLUGINS", "")
    config = fclkit.ExperimentConfig(cl="test-momentum-sgd", **{**TINY, "rounds": 1},
                                     output=str(flower_federation["dir"] / "runs"))
    local = _run(config, components=[MomentumSGD])
    options = {"mode": "deployment", "superlink": flower_federation["superlink"],
               "insecure": True, "node_wait_timeout": 60.0, "run_timeout": 150.0}
    try:
        flower = _run(config.evolve(engine="flower", engine_options=options),
                      components=[MomentumSGD], write_results=True)
    except BaseException:
        for log in flower_federation["logs"]:
            print(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}")
        raise
    assert flower.metrics["per_client"] == local.metrics["per_client"]
    rows = (flower.run_dir / "rounds.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 2 * 2
    # each node kept its own client's state (here also on disk): 2 tasks x 1 round trained
    for k in range(2):
        (state_file,) = (flower_federation["dir"] / f"state{k}").glob("run-*/client-*.safetensors")
        assert state_file.name == f"client-{k}.safetensors"
        assert load_state(state_file)["strategy"]["rounds"] == 2


def test_simulation_starts_its_own_ray_unless_given_an_address():
    """A stale /tmp/ray/ray_current_cluster must not make Ray join a dead cluster."""
    from fclkit_builtins.flower.simulation import backend_config

    local = backend_config(FlowerEngine.Options())
    assert local["init_args"]["address"] == "local" and "num_cpus" in local["init_args"]
    remote = backend_config(FlowerEngine.Options(ray_address="ray://10.0.0.1:10001"))
    assert remote["init_args"]["address"] == "ray://10.0.0.1:10001"
    assert "num_cpus" not in remote["init_args"]
