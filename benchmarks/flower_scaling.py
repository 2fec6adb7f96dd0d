"""Wall time and peak memory of the ``flower`` engine (simulation) against ``local``.

For 10 and 50 clients, the same tiny experiment (digits, 2 tasks x 2 rounds,
1 epoch, a small MLP, Avalanche ``naive``, fedavg) runs once on the ``local`` engine
and once on ``--engine flower`` (Flower's Simulation Runtime on Ray, one CPU per
client, so 2 clients in parallel on a 2-core machine). Each run is a fresh
subprocess. Printed per run:

* ``run s``: ``fclkit.run``'s wall time; ``train s``: the training rounds
  (``timings_seconds.client_train``: the clients' rounds and, for flower, their
  messages); ``eval s``: the evaluations; ``other s``: the rest (data, set-up, and
  for flower Ray's start-up and the actors' start);
* for flower, on its own line: **Ray's start-up** (``ray.init``: the GCS, the raylet,
  the worker pool), the **actors' start** (until every virtual node has answered the
  first message: the actors start and import the ClientApp) and the **first
  evaluation** (each actor builds and prepares the experiment there);
* memory, sampled every 0.2 s over the process and all its descendants (Ray's GCS,
  raylet and actor processes): the peak of the **total** RSS (pages shared between
  processes -- libraries, Ray's shared-memory object store -- count once per process)
  and of the total **PSS** (shared pages split between the processes that map them:
  what the machine really holds), and the peak RSS **per process**, by role (the run's
  own process, each Ray actor, Ray's own processes).

``--workload fmnist`` runs a workload whose rounds do real work instead: all of
``split-fmnist`` (60,000 training images over the clients), 2 tasks x 2 rounds,
1 epoch, the benchmark's default small model (LeNet-5), ``naive``, ``fedavg``.
The tiny default workload measures the engine's overhead per message; this one
what a user's run sees.

The last line gives flower/local for the training rounds (target: at most 1.5x).
Both engines must produce identical accuracy matrices. For scale, the same number of
virtual nodes also runs Flower's simulation with a ClientApp that answers at once
(same Ray settings, a 10 kB payload, 4 rounds after a first one): Flower's own floor
for these rounds, which no ClientApp goes below.

``--deployment`` measures the deployment mode instead, as a new user would run it: a
SuperLink and two SuperNodes (``flower-superlink``/``flower-supernode``, insecure, on
127.0.0.1, Flower's default settings) and a 2-client run of the same experiment,
once with the nodes' workers (the default: a node keeps its prepared experiment
between messages, see ``fclkit_builtins.flower.node_worker``) and once with
``--node-config fclkit-node-worker=false`` (every message prepares it again in its
own ``flwr-clientapp`` process). It prints the overhead per training round
(flower's training time minus the local engine's, per round; target: at most 2 s)
and per evaluation.

    PYTHONPATH=.:plugins python benchmarks/flower_scaling.py [--clients 10 50] [--json out.json]
    PYTHONPATH=.:plugins python benchmarks/flower_scaling.py --deployment
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = 1.5
DEPLOYMENT_TARGET = 2.0
BIN = Path(sys.executable).parent


#: name -> (what it is, ExperimentConfig settings besides engine and clients)
WORKLOADS = {
    "tiny": ("digits, 2 tasks x 2 rounds, 1 epoch, MLP(hidden=32), naive, fedavg",
             dict(benchmark="digits", model_options={"hidden": 32})),
    "fmnist": ("split-fmnist (all 60,000 training images), 2 tasks x 2 rounds, 1 epoch, "
               "LeNet-5, naive, fedavg", dict(benchmark="split-fmnist")),
}


def child(engine: str, clients: int, cpus_per_client: float, superlink: str = "",
          workload: str = "tiny") -> None:
    """Run one experiment in this process and print its numbers as JSON."""
    import fclkit
    import fclkit_builtins.flower

    stamps: dict[str, float] = {}
    options: dict = {}
    if engine == "flower":
        options = {"num_cpus_per_client": cpus_per_client}
    if superlink:
        options = {"mode": "deployment", "superlink": superlink, "insecure": True,
                   "node_wait_timeout": 120.0, "run_timeout": 1800.0}
        engine = "flower-deployment"
    if engine == "flower":
        import fclkit_builtins.flower.executor as executor
        import fclkit_builtins.flower.simulation as simulation

        def timed(fn, key, first=False):  # a call's seconds go to stamps[key]
            def wrapper(*args, **kwargs):
                t0 = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    if first:  # the first call's only
                        stamps.setdefault(key, time.perf_counter() - t0)
                    else:
                        stamps[key] = time.perf_counter() - t0
            return wrapper

        simulation.start_ray = timed(simulation.start_ray, "ray_start")
        executor.FlowerExecutor._discover = timed(executor.FlowerExecutor._discover,
                                                  "actors_start")
        executor.FlowerExecutor.evaluate = timed(executor.FlowerExecutor.evaluate,
                                                 "first_evaluation", first=True)
    config = fclkit.ExperimentConfig(
        cl="naive", fusion="fedavg", clients=clients, tasks=2, rounds=2, epochs=1,
        threads=1, seed=0, fm="none", **WORKLOADS[workload][1],
        engine="local" if engine == "local" else "flower", engine_options=options)
    started = time.perf_counter()
    result = fclkit.run(config, plugins=[fclkit_builtins.flower], write_results=False)
    wall = time.perf_counter() - started
    print(json.dumps({"wall": wall, "timings": result.metrics["timings_seconds"],
                      "stamps": stamps, "matrix": result.accuracy_matrix()}))


def floor_child(clients: int) -> None:
    """Flower's simulation with a ClientApp that replies at once: seconds of 4 rounds."""
    import logging

    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    import fclkit_builtins.flower.engine as engine
    import fclkit_builtins.flower.simulation as simulation

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    client = ClientApp()

    @client.train()
    def train(message, context):
        return Message(RecordDict({"h": ConfigRecord({"ok": 1})}), reply_to=message)

    server = ServerApp()
    seconds: list[float] = []

    @server.main()
    def main(grid, context):
        nodes = list(grid.get_node_ids())
        while len(nodes) < clients:
            time.sleep(0.1)
            nodes = list(grid.get_node_ids())
        for r in range(5):
            t0 = time.perf_counter()
            record = ArrayRecord()
            record["w"] = Array(dtype="torch.float32", shape=(2500,), stype="fclkit.torch-raw",
                                data=bytes(10_000))
            pending = set(grid.push_messages([
                Message(RecordDict({"h": ConfigRecord({"r": r}), "p": record}), dst_node_id=n,
                        message_type="train", group_id=str(r)) for n in nodes]))
            while pending:
                got = list(grid.pull_messages(pending))
                pending.difference_update(m.metadata.reply_to_message_id for m in got)
                if pending:
                    time.sleep(0.02)
            seconds.append(time.perf_counter() - t0)

    config = simulation.backend_config(engine.FlowerEngine.Options())
    logging.getLogger("flwr").setLevel(logging.WARNING)
    simulation.start_ray(config["init_args"])
    run_simulation(server_app=server, client_app=client, num_supernodes=clients,
                   backend_config=config)
    print(json.dumps({"rounds": seconds[1:]}))


def floor(clients: int) -> float:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins"),
                                                       os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, __file__, "--floor-child", str(clients)],
                          capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"Flower's floor with {clients} nodes failed:\n{proc.stderr[-2000:]}")
    return sum(json.loads(lines[-1])["rounds"])


def _role(proc, root_pid: int) -> str:
    if proc.pid == root_pid:
        return "run process"
    try:
        name = " ".join(proc.cmdline()) or proc.name()
    except Exception:  # noqa: BLE001 - a process that just ended
        return "other"
    if "ClientAppActor" in name:
        return "Ray actor"
    for part, role in (("DashboardAgent", "dashboard agent"),
                       ("dashboard/agent", "dashboard agent"),
                       ("RuntimeEnvAgent", "runtime-env agent"),
                       ("runtime_env/agent", "runtime-env agent"), ("raylet", "raylet"),
                       ("gcs_server", "GCS"), ("dashboard.py", "dashboard (API server)"),
                       ("log_monitor", "log monitor"), ("monitor.py", "monitor")):
        if part in name:
            return f"Ray {role}"
    if "ray::" in name or "default_worker" in name:
        return "Ray worker (idle)"
    return "other"


def sample(pid: int) -> tuple[int, int, dict[int, tuple[str, int]]]:
    """(total RSS, total PSS, {pid: (role, RSS)}) of ``pid`` and its descendants."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0, {}
    rss = pss = 0
    per: dict[int, tuple[str, int]] = {}
    for p in procs:
        try:
            info = p.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
        per[p.pid] = (_role(p, pid), info.rss)
    return rss, pss, per


def measure(engine: str, clients: int, cpus_per_client: float, superlink: str = "",
            workload: str = "tiny") -> dict:
    env = {**os.environ, "FCLKIT_LOAD_PLUGINS": os.environ.get("FCLKIT_LOAD_PLUGINS", ""),
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins"),
                                          os.environ.get("PYTHONPATH", "")])}
    import tempfile

    errors = tempfile.TemporaryFile()
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", engine, str(clients),
                             str(cpus_per_client), superlink, workload], stdout=subprocess.PIPE,
                            stderr=errors, text=True, env=env)
    peak_rss = peak_pss = 0
    per_peak: dict[int, tuple[str, int]] = {}
    while proc.poll() is None:
        rss, pss, per = sample(proc.pid)
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        for p, (role, r) in per.items():
            if r > per_peak.get(p, ("", 0))[1]:
                per_peak[p] = (role, r)
        time.sleep(0.2)
    process_wall = time.perf_counter() - started
    out = proc.stdout.read() if proc.stdout else ""
    if proc.returncode != 0:
        errors.seek(0)
        tail = errors.read().decode(errors="replace").strip().splitlines()[-15:]
        raise SystemExit(f"{engine} with {clients} clients failed (exit {proc.returncode}):\n"
                         + "\n".join(tail))
    errors.close()
    data = json.loads(out.strip().splitlines()[-1])
    roles: dict[str, list[int]] = {}
    for role, r in per_peak.values():
        roles.setdefault(role, []).append(r)
    data.update(peak_rss=peak_rss, peak_pss=peak_pss, process_wall=process_wall,
                per_process_peak_rss={k: sorted(v, reverse=True) for k, v in roles.items()})
    return data


def deployment(worker: bool, folder: Path) -> dict:
    """A SuperLink and two SuperNodes on 127.0.0.1, one 2-client run through them."""

    from fclkit_builtins.flower.loopback import free_port, stop_process_groups, wait_for_port

    for exe in ("flower-superlink", "flower-supernode"):
        if not (BIN / exe).exists():
            raise SystemExit(f"{exe} is not installed here: pip install \"fclkit[flower]\"")
    env = {**os.environ, "FCLKIT_LOAD_PLUGINS": os.environ.get("FCLKIT_LOAD_PLUGINS", ""),
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins"),
                                          os.environ.get("PYTHONPATH", "")])}
    procs: list[subprocess.Popen] = []

    def start(name: str, args: list[str]) -> subprocess.Popen:
        home = folder / f"home-{name}"
        home.mkdir(parents=True, exist_ok=True)
        # relay timings; the nodes' workers' sockets and logs in this run's folder
        debug = {"FCLKIT_DEBUG": "1", "XDG_RUNTIME_DIR": str(folder)} \
            if name.startswith("node") else {}
        with open(folder / f"{name}.log", "wb") as log:
            proc = subprocess.Popen([str(BIN / args[0]), *args[1:]], cwd=folder,
                                    env={**env, "FLWR_HOME": str(home), **debug}, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(proc)
        return proc

    port = free_port()
    try:
        link = start("superlink", ["flower-superlink", "--insecure", "--host", "127.0.0.1",
                                   "--port", str(port),
                                   "--disable-runtime-dependency-installation"])
        try:
            wait_for_port(port, link, 120.0)
        except (RuntimeError, TimeoutError) as exc:
            raise SystemExit(f"the SuperLink did not start: {exc}") from None
        for k in range(2):
            extra = "" if worker else " fclkit-node-worker=false"
            start(f"node{k}", ["flower-supernode", "--insecure", "--superlink",
                               f"127.0.0.1:{port}", "--port", str(free_port()),
                               "--node-config",
                               f"partition-id={k} num-partitions=2{extra}"])
        result = measure("flower", 2, 1.0, superlink=f"127.0.0.1:{port}")
        import re

        relays = []  # (step, seconds in the worker's relay, age of the process then)
        for k in range(2):
            text = (folder / f"node{k}.log").read_text(errors="replace")
            relays += [(m[0], float(m[1]), float(m[2])) for m in re.findall(
                r"fclkit relay: (\w+) served by the node's worker in ([\d.]+) s; this process "
                r"is ([\d.]+) s old", text)]
        result["relays"] = relays
        return result
    finally:  # the whole process groups: SuperExec, app processes, workers
        stop_process_groups(procs, timeout=20)


def main_deployment(json_path: str | None) -> None:
    import tempfile

    print("flower deployment: a SuperLink and 2 SuperNodes on 127.0.0.1 (Flower's defaults), "
          "digits, 2 clients, 2 tasks x 2 rounds, 1 epoch, MLP(hidden=32), naive, fedavg")
    rounds, evaluations = 2 * 2, 1 + 2
    local = measure("local", 2, 1.0)
    results = {"local": local}
    header = (f"{'engine':<28} {'run s':>7} {'train s':>8} {'eval s':>7} "
              f"{'per round s':>12} {'per eval s':>11}")
    print(header)
    print("-" * len(header))
    t = local["timings"]
    print(f"{'local':<28} {local['wall']:>7.1f} {t['client_train']:>8.2f} "
          f"{t['evaluation']:>7.2f} {t['client_train'] / rounds:>12.2f} "
          f"{t['evaluation'] / evaluations:>11.2f}")
    for worker in (True, False):
        with tempfile.TemporaryDirectory(prefix="fclkit-deploy-") as tmp:
            r = deployment(worker, Path(tmp))
        name = "deployment, node workers" if worker else "deployment, process/message"
        results[name] = r
        ft = r["timings"]
        over = (ft["client_train"] - t["client_train"]) / rounds
        over_eval = (ft["evaluation"] - t["evaluation"]) / evaluations
        print(f"{name:<28} {r['wall']:>7.1f} {ft['client_train']:>8.2f} "
              f"{ft['evaluation']:>7.2f} {ft['client_train'] / rounds:>12.2f} "
              f"{ft['evaluation'] / evaluations:>11.2f}")
        print(f"  {name}: overhead {over:.2f} s per training round (target <= "
              f"{DEPLOYMENT_TARGET:g} s: {'met' if over <= DEPLOYMENT_TARGET else 'NOT met'}), "
              f"{over_eval:.2f} s per evaluation; identical accuracy matrices: "
              f"{r['matrix'] == local['matrix']}")
        fits = [(x, age) for step, x, age in r.get("relays", []) if step == "fit"]
        if fits:
            relay = sum(x for x, _ in fits) / len(fits)
            before = sum(age - x for x, age in fits) / len(fits)
            print(f"  of a training message's time on a node: the flwr-clientapp process "
                  f"(start, Flower's imports, app loading) {before:.2f} s before fclkit's "
                  f"relay, the relay and the worker's round {relay:.2f} s (mean of "
                  f"{len(fits)}); the rest of the round is Flower's polling (SuperNode: 3 s "
                  "when idle, SuperExec: 1 s, reply: 0.5 s; server: 0.2 s)")
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=1) + "\n")


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--cpus-per-client", type=float, default=1.0)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--deployment", action="store_true",
                        help="measure the deployment mode (a SuperLink, two SuperNodes)")
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="tiny",
                        help="tiny: the engine's overhead per message; fmnist: rounds that "
                        "do real work")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--floor-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor_child:
        floor_child(args.floor_child)
        return
    if args.child:
        child(args.child[0], int(args.child[1]), float(args.child[2]), args.child[3],
              args.child[4])
        return
    if args.deployment:
        main_deployment(args.json)
        return

    print(f"flower scaling: {os.cpu_count()} CPUs, {WORKLOADS[args.workload][0]}, "
          f"{args.cpus_per_client:g} CPU per simulated client")
    header = (f"{'clients':>7} {'engine':>7} {'run s':>7} {'train s':>8} {'eval s':>7} "
              f"{'other s':>8} {'peak RSS MiB':>13} {'peak PSS MiB':>13}")
    print(header)
    print("-" * len(header))
    results: dict[str, dict] = {}
    ratios: dict[int, float] = {}
    for k in args.clients:
        res = {e: measure(e, k, args.cpus_per_client, workload=args.workload)
               for e in ("local", "flower")}
        for engine, r in res.items():
            t = r["timings"]
            train, evaluation = t.get("client_train", 0.0), t.get("evaluation", 0.0)
            print(f"{k:>7} {engine:>7} {r['wall']:>7.1f} {train:>8.2f} {evaluation:>7.2f} "
                  f"{r['wall'] - train - evaluation:>8.1f} {_mib(r['peak_rss']):>13} "
                  f"{_mib(r['peak_pss']):>13}")
        lo, fl = res["local"], res["flower"]
        s = fl["stamps"]
        print(f"{k:>7} flower start-up: Ray {s.get('ray_start', float('nan')):.1f} s "
              f"(ray.init), actors {s.get('actors_start', float('nan')):.1f} s (until every "
              f"node answered), first evaluation {s.get('first_evaluation', float('nan')):.1f}"
              " s (each actor prepares the experiment)")
        for engine, r in res.items():
            parts = []
            for role, values in sorted(r["per_process_peak_rss"].items(),
                                       key=lambda kv: -max(kv[1])):
                shown = " / ".join(_mib(v) for v in values[:4])
                more = f" (+{len(values) - 4} more)" if len(values) > 4 else ""
                parts.append(f"{role} x{len(values)}: {shown}{more}")
            print(f"{k:>7} {engine:>7} peak RSS per process (MiB): {'; '.join(parts)}")
        ratio = fl["timings"]["client_train"] / lo["timings"]["client_train"]
        ratios[k] = ratio
        fl["flower_floor_s"] = base = floor(k)
        print(f"{k:>7} Flower's own floor for these 4 rounds (a ClientApp that answers at once): "
              f"{base:.2f} s = {base / lo['timings']['client_train']:.2f}x the local engine's "
              f"training rounds; flower minus that floor: "
              f"{(fl['timings']['client_train'] - base) / lo['timings']['client_train']:.2f}x")
        print(f"{k:>7} flower/local: whole run {fl['wall'] / lo['wall']:.2f}x, training rounds "
              f"{ratio:.2f}x (target <= {TARGET}x: {'met' if ratio <= TARGET else 'NOT met'}), "
              f"peak RSS {fl['peak_rss'] / lo['peak_rss']:.1f}x, peak PSS "
              f"{fl['peak_pss'] / lo['peak_pss']:.1f}x; identical accuracy matrices: "
              f"{lo['matrix'] == fl['matrix']}")
        results[str(k)] = res
    print("run s: fclkit.run wall time; train s: the training rounds (clients + messages); "
          "eval s: evaluations (flower: the first one includes each actor preparing the "
          "experiment); other s: imports, data, Ray start-up, actors' start")
    print("training rounds, flower / local: "
          + ", ".join(f"{k} clients {v:.2f}x" for k, v in ratios.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
