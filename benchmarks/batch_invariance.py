"""Does a backbone's output for a row depend on the batch it is computed in?

    python benchmarks/batch_invariance.py [--benchmark digits] [--threads 1]

Computes the benchmark's default FM features of one training row in batches of 64
(first position), 64 (other neighbours, another position), 40 and 1, and prints
whether each equals the first bit for bit, and the largest difference. This is why
the disk feature cache is opt-in (docs/performance.md, "Feature cache on disk").
"""

from __future__ import annotations

import argparse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmark", default="digits")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import torch

    import fclkit
    from fclkit.plugins import build_registry
    from fclkit.runtime.experiment import Experiment

    torch.set_num_threads(args.threads)
    config = fclkit.ExperimentConfig(benchmark=args.benchmark, threads=args.threads,
                                     loggers=("none",), cache_dir="none")
    experiment = Experiment(config, build_registry())
    experiment.prepare()
    fm = experiment.foundation_model
    x = torch.cat([t.x_train for c in experiment.stream.clients for t in c.tasks])
    with torch.no_grad():
        reference = fm.encode(x[0:64]).float()[0]
        cases = {"batch 64, other neighbours, position 10":
                     fm.encode(torch.cat([x[100:110], x[0:1], x[110:163]])).float()[10],
                 "batch 40": fm.encode(x[0:40]).float()[0],
                 "batch 1": fm.encode(x[0:1]).float()[0]}
    for label, value in cases.items():
        print(f"{label:<42} identical: {torch.equal(value, reference)!s:<5} "
              f"max |diff| {float((value - reference).abs().max()):.2e}")


if __name__ == "__main__":
    main()
