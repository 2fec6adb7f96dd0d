"""Wall time and peak memory of the ``flower`` engine (simulation) against ``local``.

For 10 and 50 clients, the same tiny experiment (digits, 2 tasks x 2 rounds,
1 epoch, a small MLP, Avalanche ``naive``) runs once on the ``local`` engine and
once on ``--engine flower`` (Flower's Simulation Runtime on Ray, one CPU per
client, so 2 clients in parallel on a 2-core machine). Each run is a fresh
subprocess; this script samples the resident memory of that process and all its
descendants (Ray's GCS, raylet and actor processes included) every 0.1 s and
reports the peak of the sum. (A sum of RSS counts pages shared between
processes -- shared libraries, Ray's shared-memory object store -- once per
process, so it over-states what the machine really needs.) Both engines must
produce identical accuracy matrices.

    PYTHONPATH=.:plugins python benchmarks/flower_scaling.py [--clients 10 50]
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


def child(engine: str, clients: int, cpus_per_client: float) -> None:
    """Run one experiment in this process and print its numbers as JSON."""
    import fclkit
    import fclkit_builtins.flower

    config = fclkit.ExperimentConfig(
        cl="naive", fusion="fedavg", clients=clients, tasks=2, rounds=2, epochs=1,
        model_options={"hidden": 32}, threads=1, seed=0, engine=engine,
        engine_options={"num_cpus_per_client": cpus_per_client} if engine == "flower" else {})
    started = time.perf_counter()
    result = fclkit.run(config, plugins=[fclkit_builtins.flower], write_results=False)
    wall = time.perf_counter() - started
    print(json.dumps({"wall": wall, "timings": result.metrics["timings_seconds"],
                      "matrix": result.accuracy_matrix()}))


def tree_rss(pid: int) -> int:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def measure(engine: str, clients: int, cpus_per_client: float) -> dict:
    env = {**os.environ, "FCLKIT_LOAD_PLUGINS": os.environ.get("FCLKIT_LOAD_PLUGINS", ""),
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins"),
                                          os.environ.get("PYTHONPATH", "")])}
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", engine, str(clients),
                             str(cpus_per_client)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        time.sleep(0.1)
    process_wall = time.perf_counter() - started
    out = proc.stdout.read() if proc.stdout else ""
    if proc.returncode != 0:
        raise SystemExit(f"{engine} with {clients} clients failed (exit {proc.returncode})")
    data = json.loads(out.strip().splitlines()[-1])
    data.update(peak_rss=peak, process_wall=process_wall)
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--cpus-per-client", type=float, default=1.0)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), float(args.child[2]))
        return

    print(f"flower scaling: {os.cpu_count()} CPUs, digits, 2 tasks x 2 rounds, 1 epoch, "
          f"MLP(hidden=32), naive, {args.cpus_per_client:g} CPU per simulated client")
    header = (f"{'clients':>7} {'engine':>7} {'run s':>7} {'train s':>8} {'eval s':>7} "
              f"{'other s':>8} {'peak RSS MiB':>13}")
    print(header)
    print("-" * len(header))
    for k in args.clients:
        res = {e: measure(e, k, args.cpus_per_client) for e in ("local", "flower")}
        for engine, r in res.items():
            t = r["timings"]
            train, evaluation = t.get("client_train", 0.0), t.get("evaluation", 0.0)
            print(f"{k:>7} {engine:>7} {r['wall']:>7.1f} {train:>8.2f} {evaluation:>7.2f} "
                  f"{r['wall'] - train - evaluation:>8.1f} {r['peak_rss'] / 2**20:>13.0f}")
        lo, fl = res["local"], res["flower"]
        print(f"{k:>7} flower/local: whole run {fl['wall'] / lo['wall']:.1f}x, training rounds "
              f"{fl['timings']['client_train'] / lo['timings']['client_train']:.1f}x, peak RSS "
              f"{fl['peak_rss'] / lo['peak_rss']:.1f}x; identical accuracy matrices: "
              f"{lo['matrix'] == fl['matrix']}")
    print("run s: fclkit.run wall time; train s: the training rounds (clients + messages); "
          "eval s: evaluations (flower: the first one includes starting the Ray actors); "
          "other s: imports, data, Ray start-up")


if __name__ == "__main__":
    main()
