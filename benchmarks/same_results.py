"""Do two versions of fclkit give the same results? Accuracy matrices of fixed runs.

    python benchmarks/same_results.py OUT.json            # on one commit
    python benchmarks/same_results.py OUT2.json           # on another
    python benchmarks/same_results.py --compare OUT.json OUT2.json

Runs, at ``threads = 1`` and without a results folder, the default run and a tiny
configuration of each built-in fusion family (one-by-one homogeneous; one-by-one
heterogeneous with server labels and EWC; fedavg with LwF; isolated; fm-only; one-by-one
on langid), and writes every client's accuracy matrix of every model to OUT.json.
``--compare`` prints, per run, whether the two files are bit-identical and else the
largest difference. A refactor that should not change behaviour must give identical
files (at the same thread count: float sums depend on it).
"""

from __future__ import annotations

import argparse
import json
import sys

TINY = dict(clients=2, tasks=2, rounds=2, epochs=1, threads=1, loggers=("none",),
            checkpoint=False)
RUNS = {
    "default": dict(threads=1, loggers=("none",)),
    "one-by-one": dict(fusion="one-by-one", **TINY),
    "one-by-one-hetero-labels": dict(fusion="one-by-one", client_models="mlp,cnn",
                                     public_labels=5, cl="ewc", **TINY),
    "fedavg": dict(fusion="fedavg", cl="lwf", **TINY),
    "isolated": dict(fusion="isolated", **TINY),
    "fm-only": dict(fusion="fm-only", public_labels=5, **TINY),
    "langid-one-by-one": dict(benchmark="langid", fusion="one-by-one", **TINY),
}


def record(out: str, names: list[str]) -> None:
    import fclkit

    matrices = {}
    for name in names:
        result = fclkit.run(fclkit.ExperimentConfig(**RUNS[name]), write_results=False)
        matrices[name] = {cid: {model: m["accuracy_matrix"] for model, m in per.items()}
                          for cid, per in result.metrics["per_client"].items()}
        print(name, {m: round(result.summary(m)["average_accuracy"], 6)
                     for m in result.metrics["models"]}, flush=True)
    with open(out, "w") as f:
        json.dump(matrices, f, indent=1)


def _flat(tree: object) -> list[float]:
    if isinstance(tree, dict):
        return [v for k in sorted(tree) for v in _flat(tree[k])]
    if isinstance(tree, list):
        return [v for item in tree for v in _flat(item)]
    return [float(tree)]  # type: ignore[arg-type]


def compare(a_path: str, b_path: str) -> int:
    a, b = (json.load(open(p)) for p in (a_path, b_path))
    same = True
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b:
            print(f"{name}: only in {'the first' if name in a else 'the second'} file")
            same = False
            continue
        if a[name] == b[name]:
            print(f"{name}: identical")
            continue
        same = False
        fa, fb = _flat(a[name]), _flat(b[name])
        worst = max((abs(x - y) for x, y in zip(fa, fb, strict=False)), default=float("nan"))
        print(f"{name}: DIFFERENT (largest difference {worst:.4f}"
              f"{', other shape' if len(fa) != len(fb) else ''})")
    return 0 if same else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", help="where to write the matrices (JSON)")
    parser.add_argument("--only", nargs="+", choices=sorted(RUNS), default=list(RUNS))
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"))
    args = parser.parse_args()
    if args.compare:
        return compare(*args.compare)
    if not args.out:
        parser.error("give OUT.json, or --compare A B")
    record(args.out, args.only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
