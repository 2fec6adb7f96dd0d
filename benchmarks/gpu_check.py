"""The GPU path, checked: the default run and langid on ``cuda`` against the same runs on
the CPU, with the time of each phase.

    python benchmarks/gpu_check.py [--benchmarks digits langid] [--seed 0] [--tolerance 3]

For each benchmark it runs ``fclkit.run`` with the defaults (one-by-one, replay, the
benchmark's FM and small model) once with ``device = "cpu"`` and once with
``device = "cuda"``, and prints the final average accuracy of every model on each
device, their difference (in points) against ``--tolerance`` (GPU kernels sum in
another order, so the two runs agree within noise, not bit for bit), and the seconds
of each phase (``timings_seconds``: setup, client training, fusion, evaluation,
backbone, total). It exits 1 when a difference exceeds the tolerance, and 2 at once
with one line when no CUDA device is visible (this machine has none).
"""

from __future__ import annotations

import argparse
import sys
import time

PHASES = ("setup", "to_first_round", "client_train", "fusion", "evaluation", "backbone",
          "total")


def run(benchmark: str, device: str, seed: int) -> tuple[dict, float]:
    import fclkit

    config = fclkit.ExperimentConfig(benchmark=benchmark, device=device, seed=seed,
                                     loggers=("none",), checkpoint=False)
    started = time.perf_counter()
    result = fclkit.run(config, write_results=False)
    return result.metrics, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmarks", nargs="+", default=["digits", "langid"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=3.0,
                        help="largest accuracy difference CPU vs GPU, in points")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device is visible here: run this on a machine with an NVIDIA GPU "
              "(pip install -e . there, then python benchmarks/gpu_check.py)")
        return 2
    print(f"GPU: {torch.cuda.get_device_name(0)}; torch {torch.__version__}")
    worst = 0.0
    for benchmark in args.benchmarks:
        metrics = {device: run(benchmark, device, args.seed) for device in ("cpu", "cuda")}
        print(f"\n{benchmark}, seed {args.seed}")
        print(f"  {'model':<10} {'cpu %':>8} {'cuda %':>8} {'diff':>6}")
        for model in metrics["cpu"][0]["models"]:
            cpu = 100 * metrics["cpu"][0]["mean"][model]["average_accuracy"]
            gpu = 100 * metrics["cuda"][0]["mean"][model]["average_accuracy"]
            worst = max(worst, abs(cpu - gpu))
            print(f"  {model:<10} {cpu:8.1f} {gpu:8.1f} {gpu - cpu:+6.1f}")
        print(f"  {'phase (s)':<16} {'cpu':>8} {'cuda':>8}")
        for phase in PHASES:
            values = [metrics[d][0]["timings_seconds"].get(phase) for d in ("cpu", "cuda")]
            shown = [f"{v:8.2f}" if isinstance(v, (int, float)) else f"{'-':>8}"
                     for v in values]
            print(f"  {phase:<16} {shown[0]} {shown[1]}")
        print(f"  {'wall':<16} {metrics['cpu'][1]:8.2f} {metrics['cuda'][1]:8.2f}")
    ok = worst <= args.tolerance
    print(f"\nlargest accuracy difference cpu vs cuda: {worst:.1f} points; tolerance "
          f"{args.tolerance:g}: {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
