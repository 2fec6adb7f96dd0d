"""Reliability on the flower engine: checkpoints, ``--resume``, worker errors, lost nodes.

* in process (a fake Grid, no Ray): a run whose server dies after a checkpoint and
  is resumed -- through ``fclkit.run`` and through the deployment ServerApp -- ends
  with the uninterrupted run's accuracy matrices; a worker error reaches the user
  as one line naming its cause;
* deployment: a SuperNode killed mid-round; the round completes with the other
  client, the failure is recorded, and the restarted node rejoins with its
  client's state (sent by the server);
* docs/distributed.md's one-machine federation, run with exactly its commands.

The simulation's SIGKILL-and-resume test is in test_flower_engine.py (it reuses the
uninterrupted Flower runs of its ``simulated`` fixture).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import threading
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from test_flower_engine import (
    BIN,
    TINY,
    FailingSGD,
    InProcessFlower,
    InProcessGrid,
    MomentumSGD,
    ServerKilled,
    _env,
    _flower_installed,
    _run,
    needs_flower,
)

import fclkit
from fclkit_builtins.flower.loopback import free_port, stop_process_groups, wait_for_port

ROOT = Path(__file__).resolve().parents[1]


def _header(message: Any) -> Any:
    return message.content["fclkit"]


# -------------------------------------------------------- in process: resume


@needs_flower
def test_a_run_killed_after_a_checkpoint_resumes_with_every_clients_state(monkeypatch, tmp_path):
    from fclkit.checkpoint import latest, load_checkpoint

    config = fclkit.ExperimentConfig(cl="test-momentum-sgd", engine="test-flower-inprocess",
                                     output=str(tmp_path), name="killed", **TINY)
    parts = [MomentumSGD, InProcessFlower]
    clean = _run(config.evolve(name="clean"), components=parts, write_results=True)

    monkeypatch.setattr(InProcessFlower, "crash_at", "task1-round0")
    with pytest.raises(ServerKilled):
        _run(config, components=parts, write_results=True)
    run_dir = tmp_path / "killed"
    assert latest(run_dir)["step"] == 1  # task 1 done (2 rounds), evaluated
    state = load_checkpoint(run_dir)
    assert set(state["clients"]) == {"0", "1"}  # every client's state, from the replies
    assert state["clients"]["1"]["strategy"]["rounds"] == 2
    assert state["clients"]["1"]["strategy"]["state"]  # the optimizer's momentum buffers

    monkeypatch.setattr(InProcessFlower, "crash_at", "")
    resumed = _run(None, resume=run_dir, components=parts)  # new nodes: empty context.state
    assert resumed.metrics["per_client"] == clean.metrics["per_client"]
    assert resumed.metrics["communication"] == clean.metrics["communication"]
    trains = [m for m in InProcessFlower.last_grid.sent if m.metadata.message_type == "train"]
    carried = [(m.metadata.group_id, "state" in _header(m)) for m in trains]
    # the first message of each client carries its state; once loaded, the node has it
    assert carried == [("task1-round0", True)] * 2 + [("task1-round1", False)] * 2


@needs_flower
def test_the_deployment_server_app_writes_checkpoints_and_resumes(tmp_path):
    """The ServerApp (the SuperLink's process in deployment) gets the results folder
    from the generated app's run config, checkpoints there, and resumes from it."""
    from flwr.app import Context, RecordDict

    from fclkit.checkpoint import latest, load_checkpoint
    from fclkit.plugins import build_registry, components_from_classes
    from fclkit.runtime.experiment import Experiment
    from fclkit_builtins.flower import server_app
    from fclkit_builtins.flower.client_app import client_app
    from fclkit_builtins.flower.deployment import write_app
    from fclkit_builtins.flower.protocol import RUN_DIR, RUN_RESUME

    config = fclkit.ExperimentConfig(cl="test-momentum-sgd", engine="flower",
                                     engine_options={"mode": "deployment"}, **TINY)
    local = _run(config.evolve(engine="local", engine_options={}), components=[MomentumSGD])
    registry = build_registry(extra_plugins=[])
    components_from_classes(registry, [MomentumSGD])
    submitter = Experiment(config, registry)  # what `fclkit run` holds: never prepared
    submitter.run_dir = run_dir = tmp_path / "run"
    run_dir.mkdir()

    def context() -> Any:
        app = write_app(tmp_path / "app", submitter, tmp_path / "result.json")
        pyproject = tomllib.loads((app / "pyproject.toml").read_text())
        run_config = pyproject["tool"]["flwr"]["app"]["config"]
        assert run_config[RUN_DIR] == str(run_dir.resolve())
        return Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                       run_config=run_config)

    first = context()
    assert first.run_config[RUN_RESUME] is False
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(3)  # not the run's: the ClientApp must leave it as it was
    try:
        with pytest.raises(ServerKilled):
            server_app.main(InProcessGrid(client_app, 2, crash_at="task1-round0"), first)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(threads)
    assert json.loads((tmp_path / "result.json").read_text())["status"] == "failed"
    assert latest(run_dir)["step"] == 1

    submitter.resume_state = load_checkpoint(run_dir)  # `fclkit run --resume RUN_DIR`
    second = context()
    assert second.run_config[RUN_RESUME] is True
    server_app.main(InProcessGrid(client_app, 2), second)  # new SuperNodes, no state
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["status"] == "ok", result
    assert result["metrics"]["per_client"] == local.metrics["per_client"]
    assert len(result["rows"]) == 2 * 2 * 2  # the rounds before the crash are kept


@needs_flower
def test_no_state_travels_when_the_run_writes_no_checkpoints():
    config = fclkit.ExperimentConfig(cl="test-momentum-sgd", engine="test-flower-inprocess",
                                     **TINY)
    _run(config, components=[MomentumSGD, InProcessFlower])  # no results folder
    grid = InProcessFlower.last_grid
    assert all(_header(m)["want_state"] is False and "state" not in _header(m)
               for m in grid.sent if m.metadata.message_type != "query")
    assert "fclkit.client.arrays" in grid.contexts[100].state  # the node keeps it


# ------------------------------------------------- in process: a worker's error


RAY_ERROR = (
    "<class 'ray.exceptions.RayTaskError(RaySystemError)'>:<'\x1b[36mray::ClientAppActor.run()"
    "\x1b[39m (pid=23938, ip=192.0.2.2, actor_id=1181877)\n"
    "  At least one of the input arguments for this task could not be computed:\n"
    "ray.exceptions.RaySystemError: System error: module 'fclkit' has no attribute 'hookimpl'\n"
    "traceback: Traceback (most recent call last):\n"
    '  File "/src/plugins/fclkit_builtins/flower/__init__.py", line 27, in <module>\n'
    "    @fclkit.hookimpl\n"
    "     ^^^^^^^^^^^^^^^\n"
    "AttributeError: module 'fclkit' has no attribute 'hookimpl''>")


class _BrokenWorkers(InProcessGrid):
    """Every simulated node answers with the error Flower sends when a Ray actor raised."""

    def push_messages(self, messages: Any) -> list[str]:
        from flwr.app import Error, Message

        ids = []
        for message in messages:
            message_id = f"m{len(self.sent)}"
            self.sent.append(message)
            message.metadata.__dict__["_message_id"] = message_id
            self.replies[message_id] = Message(Error(code=0, reason=RAY_ERROR),
                                               reply_to=message)
            ids.append(message_id)
        return ids


@needs_flower
def test_an_error_in_the_simulations_workers_is_one_line_naming_its_cause():
    from fclkit.plugins import build_registry
    from fclkit.runtime.experiment import Experiment
    from fclkit_builtins.flower.client_app import client_app
    from fclkit_builtins.flower.engine import FlowerEngine
    from fclkit_builtins.flower.executor import FlowerExecutor

    config = fclkit.ExperimentConfig(cl="naive", engine="flower", **TINY)
    experiment = Experiment(config, build_registry())
    options = FlowerEngine.Options(node_wait_timeout=60.0)
    t0 = time.monotonic()
    with pytest.raises(fclkit.FclkitError) as caught:
        FlowerExecutor(_BrokenWorkers(client_app, 2), experiment, options, deployment=False)
    assert time.monotonic() - t0 < 10  # at once, not after node_wait_timeout
    text = str(caught.value)
    assert "\n" not in text and len(text) < 300, text
    assert "AttributeError: module 'fclkit' has no attribute 'hookimpl'" in text
    assert "SuperNode" not in text + str(caught.value.hint)  # not a deployment problem


# ------------------------------------------------------------ real processes


class HangingSGD(MomentumSGD):
    """On a node started with FCLKIT_TEST_HANG=FILE: in the second round of the first
    task, write this process's pid to FILE and hang (until the test kills the node)."""

    name = "test-hanging-sgd"

    def train_round(self, task, *, round_info, epochs, extra_losses: Sequence = ()):
        marker = os.environ.get("FCLKIT_TEST_HANG")
        if marker and (round_info.task, round_info.round) == (0, 1):
            Path(marker).write_text(str(os.getpid()))
            time.sleep(600)
        return super().train_round(task, round_info=round_info, epochs=epochs)


class Processes:
    """Processes started in their own sessions, each killed with its whole group."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str],
              cwd: Path | None = None) -> subprocess.Popen:
        log = self.folder / f"{name}.log"
        with open(log, "ab") as fh:
            proc = subprocess.Popen(argv, cwd=cwd or self.folder, env=env, stdout=fh,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def logs(self) -> str:
        return "".join(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}\n"
                       for log in sorted(self.folder.glob("*.log")))

    def close(self) -> None:  # SIGTERM first: a SuperLink stops its apps
        stop_process_groups(self.procs.values())


def _flower_env(**extra: str) -> dict[str, str]:
    return _env(FCLKIT_LOAD_PLUGINS="", FLWR_SUPEREXEC_TASK_POLL_INTERVAL="0.2", **extra)


def _start_node(procs: Processes, k: int, link: str, **env: str) -> None:
    home = procs.folder / f"home-node{k}-{time.monotonic_ns()}"
    home.mkdir()
    procs.start(f"node{k}", [str(BIN / "flower-supernode"), "--insecure", "--superlink", link,
                             "--port", str(free_port()), "--max-wait-time", "60",
                             "--node-config", f"partition-id={k} num-partitions=2"],
                _flower_env(FLWR_HOME=str(home), **env))


@pytest.mark.slow
def test_a_supernode_lost_mid_round_fails_its_client_and_rejoins_with_its_state(
        tmp_path, monkeypatch):
    if not _flower_installed() or not (BIN / "flower-superlink").exists():
        pytest.skip('Flower (flwr) is not installed: pip install "fclkit[flower]"')
    from fclkit.runtime.experiment import Experiment

    # the same run on the local engine, where client 1 fails in that round
    build_client = Experiment.build_client

    def _tell_strategies_their_client(self, cid):
        client = build_client(self, cid)
        client.strategy.client_id = cid
        return client

    with monkeypatch.context() as mp:
        mp.setattr(Experiment, "build_client", _tell_strategies_their_client)
        local = _run(fclkit.ExperimentConfig(cl="test-failing-sgd", **TINY),
                     components=[FailingSGD])
    assert [(f["task"], f["round"], f["client"]) for f in local.metrics["failures"]] == [
        (0, 1, 1)]

    procs = Processes(tmp_path)
    marker = tmp_path / "hanging.pid"
    port = free_port()
    link = f"127.0.0.1:{port}"
    outcome: dict[str, Any] = {}
    try:
        home = tmp_path / "home-superlink"
        home.mkdir()
        superlink = procs.start("superlink", [
            str(BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port",
            str(port), "--disable-runtime-dependency-installation"],
            _flower_env(FLWR_HOME=str(home)))
        wait_for_port(port, superlink, timeout=60)
        _start_node(procs, 0, link)
        _start_node(procs, 1, link, FCLKIT_TEST_HANG=str(marker))  # (no state folder)
        config = fclkit.ExperimentConfig(
            cl="test-hanging-sgd", output=str(tmp_path / "runs"), name="lost", **TINY,
            engine="flower", engine_options={
                "mode": "deployment", "superlink": link, "insecure": True,
                "node_wait_timeout": 60.0, "reply_timeout": 90.0, "run_timeout": 400.0})

        def submit() -> None:
            try:
                outcome["result"] = _run(config, components=[HangingSGD], write_results=True)
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                outcome["error"] = exc

        runner = threading.Thread(target=submit, daemon=True)
        t0 = time.monotonic()
        runner.start()
        while not marker.exists() and runner.is_alive() and time.monotonic() - t0 < 240:
            time.sleep(0.2)
        assert marker.exists(), f"client 1 never reached its second round: {outcome}"
        time.sleep(0.5)
        hanging = int(marker.read_text())
        procs.kill("node1")  # SIGKILL to the SuperNode and its ClientApp, mid-round
        _wait_gone(hanging)
        _start_node(procs, 1, link)  # restarted: a new node id, no state of its own
        runner.join(timeout=400)
        assert not runner.is_alive(), "the run did not finish"
        if "error" in outcome:
            raise outcome["error"]
        print(f"node-loss deployment run: {time.monotonic() - t0:.0f}s")
    except BaseException:
        print(procs.logs())
        raise
    finally:
        procs.close()
        if marker.exists():
            _wait_gone(int(marker.read_text()), kill=True)

    result = outcome["result"]
    failures = result.metrics["failures"]
    assert [(f["task"], f["round"], f["client"]) for f in failures] == [(0, 1, 1)], failures
    assert "node" in failures[0]["reason"]
    # the round went on with client 0; the new node continued from client 1's state,
    # which the server sent it: the local run (client 1 rolled back) is matched exactly
    assert result.metrics["per_client"] == local.metrics["per_client"]
    assert json.loads((result.run_dir / "checkpoint" / "latest.json").read_text())["step"] == 3


def _wait_gone(pid: int, *, kill: bool = False, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, signal.SIGKILL if kill else 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise AssertionError(f"process {pid} is still running")


# --------------------------------------------- the documented one-machine federation


def documented_one_machine_commands() -> list[str]:
    """The commands of docs/distributed.md's one-machine block, in order."""
    text = (ROOT / "docs" / "distributed.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- one-machine federation -->\s*```bash\n(.*?)```", text, re.S)
    assert block, "docs/distributed.md lost its one-machine federation block"
    lines = block.group(1).replace("\\\n", " ").splitlines()
    return [line.split("#")[0].strip() for line in lines
            if line.strip() and not line.lstrip().startswith("#")]


DOC_PORTS = (9690, 9691, 9692)  # the ports the doc's block uses (it says any free ones do)


@pytest.mark.slow
def test_the_documented_one_machine_federation_works(tmp_path):
    if not _flower_installed() or not (BIN / "flower-superlink").exists():
        pytest.skip('Flower (flwr) is not installed: pip install "fclkit[flower]"')
    commands = documented_one_machine_commands()
    assert [c.split()[0] for c in commands] == [
        "flower-superlink", "flower-supernode", "flower-supernode", "fclkit"]
    ports = {str(doc): str(free_port()) for doc in DOC_PORTS}
    assert all(doc in " ".join(commands) for doc in ports)
    commands = [re.sub(r"\b(969[0-2])\b", lambda m: ports[m.group(1)], c) for c in commands]
    procs = Processes(tmp_path)
    try:
        link_port = int(ports["9690"])
        for i, command in enumerate(commands[:3]):
            argv = shlex.split(command)
            home = tmp_path / f"home{i}"
            home.mkdir()
            proc = procs.start(f"{i}-{argv[0]}", [str(BIN / argv[0]), *argv[1:]],
                               _flower_env(FLWR_HOME=str(home)), cwd=tmp_path)
            if i == 0:
                wait_for_port(link_port, proc, timeout=60)
        time.sleep(2)
        for name, proc in procs.procs.items():  # e.g. two nodes on one Runtime API port
            assert proc.poll() is None, f"{name} exited:\n{procs.logs()}"
        argv = shlex.split(commands[3])
        t0 = time.monotonic()
        run = subprocess.run([str(BIN / argv[0]), *argv[1:]], cwd=tmp_path,
                             env=_flower_env(), capture_output=True, text=True, timeout=400)
        print(f"documented federation run: {time.monotonic() - t0:.0f}s")
        assert run.returncode == 0, run.stdout + run.stderr + procs.logs()
        for name, proc in procs.procs.items():
            assert proc.poll() is None, f"{name} died during the run:\n{procs.logs()}"
    finally:
        procs.close()
    (metrics_file,) = (tmp_path / "runs").glob("*/metrics.json")
    metrics = json.loads(metrics_file.read_text())
    assert metrics["complete"] is True and metrics["failures"] == []


def test_the_one_machine_block_has_no_shared_ports():
    commands = documented_one_machine_commands()
    ports = [re.search(r"--port (\d+)", c) for c in commands[:3]]
    assert all(ports) and len({p.group(1) for p in ports if p}) == 3, commands
