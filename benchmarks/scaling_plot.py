"""The scaling picture: fusion time per round against clients and against the public set.

One one-by-one fusion round, timed as ``benchmarks/fusion_scaling.py`` does (the
default experiment: digits, EfficientNet-Lite0 with its linear head and cached
backbone features; synthetic uploads of perturbed ``mlp``/``cnn`` small models; the
second round, task 2, from the fusion's initial state; ``--epochs`` epochs per
teacher, default 2; torch on one CPU thread):

1. against the number of clients K (public set: 10 % of digits, 143 rows), batched
   (the default) and one part at a time (``--fusion-opt batched=false``, up to
   ``--sequential-max`` clients). One-by-one does K·(K+1) distillations a round;
   the plot has dashed guides proportional to K and to K²;
2. against the public set's size (``public_fraction``; ``--public-clients`` clients,
   batched): every distillation passes over the public set, so the time grows
   linearly with its rows (a least-squares line is drawn and printed).

Every point is the best of ``--repeats`` rounds (the least disturbed by other work
on the machine). Writes the figure (``--plot``, default docs/results/scaling.png;
``--quick``: a few points, into the temporary folder) and prints the table it
shows; ``--json PATH`` writes the figures too.

    PYTHONPATH=.:plugins python benchmarks/scaling_plot.py [--clients 1 2 5 10 20 50]
        [--public 0.05 0.1 0.2 0.3 0.4] [--plot docs/results/scaling.png] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import fusion_scaling  # noqa: E402  (the timing and the synthetic uploads)


def experiment(clients: int, epochs: int, public_fraction: float):
    import fclkit
    from fclkit.plugins import build_registry
    from fclkit.runtime.experiment import Experiment

    config = fclkit.ExperimentConfig(clients=clients, threads=1, seed=0, client_models="mlp,cnn",
                                     public_fraction=public_fraction, loggers=("none",),
                                     fusion_options={"epochs": epochs})
    exp = Experiment(config, build_registry())
    exp.prepare()
    exp.initial_fusion_state = exp.server.fusion.state_dict()
    return exp


def best_round(exp, batched: bool, repeats: int) -> float:
    return min(fusion_scaling.fuse_twice(exp, batched)[0] for _ in range(repeats))


def plot(path: Path, by_clients: list[dict], by_public: list[dict], epochs: int,
         public_clients: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    ks = [r["clients"] for r in by_clients]
    batched = [r["batched_s"] for r in by_clients]
    left.plot(ks, batched, "o-", color="tab:blue", label="batched (default)")
    seq = [(r["clients"], r["sequential_s"]) for r in by_clients if r["sequential_s"]]
    if seq:
        left.plot(*zip(*seq, strict=True), "s-", color="tab:orange",
                  label="one part at a time")
    k0, t0 = ks[-1], batched[-1]
    guide = [min(ks), max(ks)]
    left.plot(guide, [t0 * k / k0 for k in guide], ":", color="grey", label="∝ K")
    left.plot(guide, [t0 * (k / k0) ** 2 for k in guide], "--", color="grey", label="∝ K²")
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("clients K")
    left.set_ylabel("seconds per fusion round")
    left.set_title(f"one-by-one fusion round vs clients\n(digits, 143 public rows, "
                   f"{epochs} epochs/teacher)")
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8)

    rows = [r["rows"] for r in by_public]
    secs = [r["batched_s"] for r in by_public]
    right.plot(rows, secs, "o-", color="tab:blue", label="batched (default)")
    slope, intercept = _line(rows, secs)
    right.plot([0, max(rows)], [intercept, intercept + slope * max(rows)], "--", color="grey",
               label=f"fit: {slope * 1e3:.2f} ms/row + {intercept:.2f} s")
    right.set_xlim(left=0)
    right.set_ylim(bottom=0)
    right.set_xlabel("public set rows")
    right.set_ylabel("seconds per fusion round")
    right.set_title(f"one-by-one fusion round vs public set\n({public_clients} clients, "
                    f"{epochs} epochs/teacher)")
    right.grid(True, alpha=0.3)
    right.legend(fontsize=8)
    fig.suptitle("fclkit on 2 CPU cores, torch 1 thread (benchmarks/scaling_plot.py)",
                 fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def _line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0
    return slope, my - slope * mx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2, 5, 10, 20, 50])
    parser.add_argument("--sequential-max", type=int, default=50,
                        help="time one part at a time up to this many clients")
    parser.add_argument("--public", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.3, 0.4])
    parser.add_argument("--public-clients", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--plot", help="where to write the figure (default: "
                        "docs/results/scaling.png; with --quick: the temporary folder)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--quick", action="store_true",
                        help="clients 1 5 10, public 0.05 0.2, one repeat")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.public, args.repeats = [1, 5, 10], [0.05, 0.2], 1
    if args.plot is None:
        import tempfile

        args.plot = str(Path(tempfile.gettempdir()) / "scaling-quick.png" if args.quick
                        else ROOT / "docs" / "results" / "scaling.png")
    import torch

    torch.set_num_threads(1)
    print(f"1) one fusion round (task 2) against the clients: public_fraction 0.1, "
          f"{args.epochs} epochs per teacher; seconds, best of {args.repeats}")
    print(f"{'clients':>7} {'distils':>7} {'batched':>8} {'sequential':>10}")
    by_clients = []
    for k in args.clients:
        exp = experiment(k, args.epochs, 0.1)
        b = best_round(exp, True, args.repeats)
        s = best_round(exp, False, args.repeats) if k <= args.sequential_max else None
        by_clients.append({"clients": k, "distillations": k * (k + 1), "batched_s": b,
                           "sequential_s": s})
        print(f"{k:>7} {k * (k + 1):>7} {b:>8.3f} "
              f"{'' if s is None else f'{s:.3f}':>10}", flush=True)
    print(f"\n2) one fusion round (task 2) against the public set: {args.public_clients} "
          f"clients, batched, {args.epochs} epochs per teacher; seconds, best of "
          f"{args.repeats}")
    print(f"{'public_fraction':>15} {'rows':>6} {'batched':>8}")
    by_public = []
    for frac in args.public:
        exp = experiment(args.public_clients, args.epochs, frac)
        rows = len(exp.stream.public.x)
        b = best_round(exp, True, args.repeats)
        by_public.append({"public_fraction": frac, "rows": rows, "batched_s": b})
        print(f"{frac:>15g} {rows:>6} {b:>8.3f}", flush=True)
    slope, intercept = _line([r["rows"] for r in by_public], [r["batched_s"] for r in by_public])
    print(f"least squares: {slope * 1e3:.2f} ms per public row + {intercept:.3f} s "
          f"({args.public_clients} clients)")
    plot(Path(args.plot), by_clients, by_public, args.epochs, args.public_clients)
    print(f"wrote {args.plot}")
    if args.json:
        Path(args.json).write_text(json.dumps({"clients": by_clients, "public": by_public},
                                              indent=1) + "\n")


if __name__ == "__main__":
    main()
