"""Peak memory and time per round of the local engine against the number of clients
and the size of the public set.

Each configuration runs in a fresh subprocess (``fclkit.run(..., write_results=False)``,
torch threads = 1) that reports:

* **peak RSS** (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) and the RSS
  (``psutil``) after set-up (data + foundation model), after the clients are
  built, and at the end;
* **time per round**: the wall time of each federated round (clients' training +
  update validation + fusion), from the run's progress events;
* the bytes of all live tensors (distinct storages found by the garbage
  collector) after the clients are built and at the end of the run: unlike RSS,
  they do not move with the allocator, so their growth per client is exact;
* how many times the foundation model's weights were loaded
  (``EfficientNetLiteFM.load_backbone`` calls) and how many EfficientNet modules
  are alive at the end -- both should be 1 ("FM weights loaded once per process");
* the bytes of one client's small model, its strategy state
  (``strategy.state_dict()``: optimizer momentum, replay memory, ...) and its
  personalised FM part, and of the server's per-client state, so that the
  growth of memory per added client can be compared with "about twice the small
  model's and its strategy state's size".

Part 1 scales the clients (1, 10, 50) with the default method (``replay`` small
MLPs guided by EfficientNet-Lite0, ``one-by-one`` fusion), ``tasks=2``,
``rounds=1``. One-by-one distillation makes ``K * (K + 1)`` teacher passes per
round (a global FM part and K personalised ones, each from K teachers), so its
time grows quadratically with K; to keep 50 clients short the fusion runs
``--fusion-epochs`` epochs per teacher (default 2 instead of the fusion's 5).
Part 2 varies ``public_fraction`` (0.05, 0.1, 0.2, 0.4) with 3 clients and the
default 5 fusion epochs.

    python benchmarks/memory_scaling.py [--clients 1 10 50] [--fusion-epochs 2]
        [--public 0.05 0.1 0.2 0.4] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

MiB = 2**20


def rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def peak() -> int:
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux


def tensor_bytes(state) -> int:
    from fclkit.serialization import flatten_state

    _, tensors = flatten_state(state)
    return int(sum(t.numel() * t.element_size() for t in tensors.values()))


def live_storages() -> dict[int, int]:
    """``{data_ptr: bytes}`` of every distinct tensor storage the garbage collector sees."""
    import gc

    import torch

    out: dict[int, int] = {}
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor):
            storage = obj.untyped_storage()
            if storage.data_ptr():
                out[storage.data_ptr()] = storage.nbytes()
    return out


def live_tensor_bytes() -> int:
    return sum(live_storages().values())


def nested_tensors(node) -> list:
    """Every tensor in a nested dict / list / tuple."""
    import torch

    if isinstance(node, torch.Tensor):
        return [node]
    if isinstance(node, dict):
        return [t for v in node.values() for t in nested_tensors(v)]
    if isinstance(node, (list, tuple)):
        return [t for v in node for t in nested_tensors(v)]
    return []


def tensor_breakdown(executor, experiment) -> dict[str, int]:
    """The live tensor bytes at the end of a run, by owner (each storage counted once)."""
    import torch

    live = live_storages()
    groups: dict[str, list] = {
        "small models (all clients)": [], "their gradients (.grad kept after the last step)": [],
        "optimizer state (SGD momentum)": [], "FM parts (server personal + global, shared "
        "with the clients)": [], "data (client tasks, tests, public set)": [],
        "FM backbone + head": [], "feature cache": [],
        "executor's pre-round client snapshots (LocalExecutor.before)": []}
    for client in executor.clients.values():
        for prm in client.model.parameters():
            groups["small models (all clients)"].append(prm)
            if prm.grad is not None:
                groups["their gradients (.grad kept after the last step)"].append(prm.grad)
        for st in client.strategy._driver.optimizer.state.values():
            groups["optimizer state (SGD momentum)"] += [
                v for v in st.values() if isinstance(v, torch.Tensor)]
        groups["FM parts (server personal + global, shared with the clients)"] += list(
            (client.fm_state or {}).values())
        for task in client.stream.tasks:
            groups["data (client tasks, tests, public set)"] += [
                task.x_train, task.y_train, task.x_test, task.y_test]
    fusion = experiment.server.fusion
    for state in [*fusion.personal.values(), fusion.global_state]:
        groups["FM parts (server personal + global, shared with the clients)"] += list(
            state.values())
    groups["data (client tasks, tests, public set)"].append(experiment.stream.public.x)
    fm = experiment.foundation_model
    groups["FM backbone + head"] += [*fm.backbone.parameters(), *fm.backbone.buffers(),
                                     *fm.head.parameters()]
    groups["feature cache"] += list(fm._cache._store.values())
    groups["executor's pre-round client snapshots (LocalExecutor.before)"] += nested_tensors(
        getattr(executor, "before", {}))
    out: dict[str, int] = {}
    claimed: set[int] = set()
    for name, tensors in groups.items():
        ptrs = {t.untyped_storage().data_ptr() for t in tensors} - claimed
        claimed |= ptrs
        out[name] = sum(live.get(p, 0) for p in ptrs)
    out["other (unattributed)"] = sum(b for p, b in live.items() if p not in claimed)
    return out


def child(spec: dict) -> None:
    """Run one configuration in this process; print its figures as one JSON line."""
    import gc
    import warnings

    warnings.simplefilter("ignore")
    out: dict = {"rss_start": rss()}
    import fclkit
    import fclkit_builtins.local.engine as local
    import fclkit_builtins.vision.efficientnet as efficientnet
    from fclkit.progress import Reporter

    loads = {"n": 0}
    original_load = efficientnet.EfficientNetLiteFM.load_backbone

    def counted_load(self, *args, **kwargs):
        loads["n"] += 1
        return original_load(self, *args, **kwargs)

    efficientnet.EfficientNetLiteFM.load_backbone = counted_load
    captured: dict = {}
    original_init = local.LocalExecutor.__init__

    def init(self, experiment):
        out["rss_after_setup"] = rss()
        out["peak_after_setup"] = peak()
        t0 = time.perf_counter()
        original_init(self, experiment)
        out["build_clients_s"] = time.perf_counter() - t0
        out["rss_after_clients"] = rss()
        gc.collect()
        out["tensors_after_clients"] = live_tensor_bytes()
        captured["executor"], captured["experiment"] = self, experiment

    local.LocalExecutor.__init__ = init

    class Timer(Reporter):
        def __init__(self) -> None:
            self.rounds: list[float] = []
            self.rss_rounds: list[int] = []
            self._t = 0.0

        def round_started(self, task: int, round: int) -> None:
            self._t = time.perf_counter()

        def round_done(self, task: int, round: int) -> None:
            self.rounds.append(time.perf_counter() - self._t)
            self.rss_rounds.append(rss())

    timer = Timer()
    config = fclkit.ExperimentConfig(
        clients=spec["clients"], tasks=spec["tasks"], rounds=spec["rounds"],
        public_fraction=spec["public_fraction"], threads=1, seed=0,
        fusion_options={"epochs": spec["fusion_epochs"]} if spec["fusion_epochs"] else {})
    t0 = time.perf_counter()
    result = fclkit.run(config, reporter=timer, write_results=False)
    out["run_s"] = time.perf_counter() - t0
    out["rss_end"] = rss()
    out["peak_rss"] = peak()
    # tensors held only by reference cycles are freed by the cyclic GC, whenever it runs:
    # count them apart, then measure what the run really keeps
    out["tensors_end_before_gc"] = live_tensor_bytes()
    gc.collect()
    out["tensors_end"] = live_tensor_bytes()
    out["round_s"] = timer.rounds
    out["rss_after_rounds"] = timer.rss_rounds
    out["timings"] = result.metrics["timings_seconds"]
    out["fm_loads"] = loads["n"]
    from efficientnet_lite_pytorch import EfficientNet

    out["efficientnet_modules_alive"] = sum(
        1 for o in gc.get_objects() if isinstance(o, EfficientNet))
    executor, experiment = captured["executor"], captured["experiment"]
    out["tensors_by_owner"] = tensor_breakdown(executor, experiment)
    client = executor.clients[0]
    fusion = experiment.server.fusion
    out["bytes"] = {
        "small_model": tensor_bytes(client.model.state_dict()),
        "small_model_grads": sum(p.grad.numel() * p.grad.element_size()
                                 for p in client.model.parameters() if p.grad is not None),
        "strategy_state": tensor_bytes(client.strategy.state_dict()),
        "client_fm_part": tensor_bytes(client.fm_state or {}),
        "client_data": tensor_bytes({str(t.task_id): {"x": t.x_train, "y": t.y_train}
                                     for t in client.stream.tasks}),
        "server_per_client": tensor_bytes(fusion.personal[0]),
        "fm_backbone_params": sum(p.numel() * p.element_size()
                                  for p in experiment.foundation_model.backbone.parameters()),
        "fm_feature_cache": sum(v.numel() * v.element_size()
                                for v in experiment.foundation_model._cache._store.values()),
    }
    out["public_rows"] = len(experiment.stream.public.x)
    out["train_rows_per_client_task"] = [t.num_train for t in client.stream.tasks]
    out["final_accuracy"] = result.metrics["mean"]["small"].get("average_accuracy")
    print(json.dumps(out), flush=True)


def measure(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                          capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"configuration {spec} failed (exit {proc.returncode}):\n"
                         f"{proc.stderr[-3000:]}")
    return {**spec, **json.loads(lines[-1])}


def slope(xs: list[float], ys: list[float]) -> float:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--tasks", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--fusion-epochs", type=int, default=2,
                        help="one-by-one epochs per teacher in the client scaling (fusion "
                        "default: 20)")
    parser.add_argument("--public", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.4])
    parser.add_argument("--public-clients", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="clients 1 10, public 0.05 0.2")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    if args.quick:
        args.clients, args.public = [1, 10], [0.05, 0.2]

    print(f"local engine, digits, default method (replay MLPs + EfficientNet-Lite0 guidance, "
          f"one-by-one fusion), tasks={args.tasks}, rounds={args.rounds}, torch threads 1, "
          "each configuration in a fresh process")
    print(f"\n1) clients (fusion epochs per teacher: {args.fusion_epochs}, public_fraction 0.1)")
    head = (f"{'clients':>7}{'peak RSS':>10}{'RSS setup':>10}{'RSS clients':>12}"
            f"{'RSS end':>9}{'tensors clients':>16}{'tensors end':>12}{'build s':>8}"
            f"{'round s':>9}{'train s':>8}{'fusion s':>9}{'eval s':>7}{'FM loads':>9}"
            f"{'FM alive':>9}")
    print(head + "\n" + "-" * len(head))
    scaling = []
    for k in args.clients:
        r = measure({"clients": k, "tasks": args.tasks, "rounds": args.rounds,
                     "public_fraction": 0.1, "fusion_epochs": args.fusion_epochs})
        scaling.append(r)
        n_rounds = len(r["round_s"])
        t = r["timings"]
        print(f"{k:>7}{r['peak_rss'] / MiB:>10.0f}{r['rss_after_setup'] / MiB:>10.0f}"
              f"{r['rss_after_clients'] / MiB:>12.0f}{r['rss_end'] / MiB:>9.0f}"
              f"{r['tensors_after_clients'] / MiB:>16.2f}{r['tensors_end'] / MiB:>12.2f}"
              f"{r['build_clients_s']:>8.2f}{sum(r['round_s']) / n_rounds:>9.2f}"
              f"{t['client_train'] / n_rounds:>8.2f}{t['fusion'] / n_rounds:>9.2f}"
              f"{t['evaluation']:>7.2f}{r['fm_loads']:>9}{r['efficientnet_modules_alive']:>9}",
              flush=True)
    print("(RSS and live tensors in MiB; round s = mean wall time of a round, = train s + "
          "fusion s + validation; eval s = all evaluations of the run)")
    b = scaling[-1]["bytes"]
    per_client_state = b["small_model"] + b["strategy_state"]
    print(f"one client: small model {b['small_model'] / 1024:.0f} KiB (+ its gradients "
          f"{b['small_model_grads'] / 1024:.0f} KiB), strategy state "
          f"{b['strategy_state'] / 1024:.0f} KiB (replay memory + SGD momentum), FM part "
          f"{b['client_fm_part'] / 1024:.0f} KiB (shared with the server's copy), its data "
          f"{b['client_data'] / 1024:.0f} KiB; server per client "
          f"{b['server_per_client'] / 1024:.0f} KiB; FM backbone "
          f"{b['fm_backbone_params'] / MiB:.1f} MiB, feature cache "
          f"{b['fm_feature_cache'] / MiB:.1f} MiB")
    ks = [r["clients"] for r in scaling]
    owners = list(scaling[0]["tensors_by_owner"])
    print("live tensors at the end by owner, MiB (K = " + ", ".join(map(str, ks))
          + ") and growth per added client (slope, KiB):")
    for owner in owners:
        vals = [r["tensors_by_owner"][owner] for r in scaling]
        per = slope(ks, vals) / 1024 if len(ks) >= 2 else float("nan")
        print(f"  {owner:<62}" + "".join(f"{v / MiB:>8.2f}" for v in vals) + f"{per:>9.0f}")
    analysis: dict = {}
    if len(ks) >= 2:
        for key in ("peak_rss", "rss_after_clients", "rss_end", "tensors_after_clients",
                    "tensors_end", "tensors_end_before_gc"):
            analysis[f"{key}_per_client"] = slope(ks, [r[key] for r in scaling])
        per_round = [sum(r["round_s"]) / len(r["round_s"]) for r in scaling]
        fusion = [r["timings"]["fusion"] / len(r["round_s"]) for r in scaling]
        train = [r["timings"]["client_train"] / len(r["round_s"]) for r in scaling]
        analysis["fusion_s_per_teacher_pass"] = [
            f / (k * (k + 1)) for f, k in zip(fusion, ks, strict=True)]
        analysis["round_s"] = per_round
        budget = 2 * per_client_state
        print(f"growth per added client (least-squares slope over K = {ks}): live tensors "
              f"{analysis['tensors_after_clients_per_client'] / 1024:.0f} KiB after building "
              f"clients, {analysis['tensors_end_per_client'] / 1024:.0f} KiB at the end "
              f"({analysis['tensors_end_before_gc_per_client'] / 1024:.0f} KiB before a "
              "gc.collect()); RSS "
              f"{analysis['rss_after_clients_per_client'] / 1024:.0f} KiB after building "
              f"clients, {analysis['rss_end_per_client'] / 1024:.0f} KiB at the end, peak "
              f"{analysis['peak_rss_per_client'] / 1024:.0f} KiB (RSS moves by tens of MiB "
              "with the allocator: noise at this scale)")
        worst = max(analysis["tensors_end_per_client"], analysis["rss_after_clients_per_client"])
        print(f"budget 2 x (small model + strategy state) = {budget / 1024:.0f} KiB per client: "
              f"{'within' if worst <= budget else 'ABOVE'} (largest of the tensor slope at the "
              f"end and the RSS slope after building clients: {worst / 1024:.0f} KiB)")
        train_slope = slope(ks, train)
        print("time per round: training " + ", ".join(f"{v:.2f}" for v in train)
              + f" s (the data are split among the clients, so the total is fixed: "
              f"{train_slope * 1000:+.0f} ms per added client); fusion "
              + ", ".join(f"{v:.2f}" for v in fusion) + " s = K * (K + 1) teacher passes x "
              + ", ".join(f"{v * 1000:.1f}" for v in analysis["fusion_s_per_teacher_pass"])
              + " ms (K = " + ", ".join(map(str, ks)) + "): quadratic in K")
        analysis["train_s_per_added_client"] = train_slope

    print(f"\n2) public set size ({args.public_clients} clients, fusion epochs per teacher: "
          "default 20)")
    head2 = (f"{'public_fraction':>15}{'rows':>6}{'train rows/client/task':>24}{'round s':>9}"
             f"{'train s':>8}{'fusion s':>9}{'fusion ms/row':>14}{'peak RSS':>10}")
    print(head2 + "\n" + "-" * len(head2))
    public = []
    for frac in args.public:
        r = measure({"clients": args.public_clients, "tasks": args.tasks, "rounds": args.rounds,
                     "public_fraction": frac, "fusion_epochs": 0})
        public.append(r)
        n_rounds = len(r["round_s"])
        t = r["timings"]
        fus = t["fusion"] / n_rounds
        print(f"{frac:>15}{r['public_rows']:>6}"
              f"{str(r['train_rows_per_client_task']):>24}{sum(r['round_s']) / n_rounds:>9.2f}"
              f"{t['client_train'] / n_rounds:>8.2f}{fus:>9.2f}"
              f"{fus / r['public_rows'] * 1000:>14.2f}{r['peak_rss'] / MiB:>10.0f}", flush=True)
    if len(public) >= 2:
        rows = [r["public_rows"] for r in public]
        fus = [r["timings"]["fusion"] / len(r["round_s"]) for r in public]
        s = slope(rows, fus)
        print(f"fusion time per round grows by {s * 1000:.2f} ms per public row "
              f"(least-squares slope; intercept {fus[0] - s * rows[0]:.2f} s)")
        analysis["fusion_s_per_public_row"] = s

    if args.json:
        Path(args.json).write_text(json.dumps(
            {"config": {k: v for k, v in vars(args).items() if k not in ("json", "child")},
             "clients": scaling, "public": public, "analysis": analysis}, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
