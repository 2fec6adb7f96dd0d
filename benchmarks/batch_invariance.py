"""Does a backbone's output for a row depend on the batch it is computed in?

    python benchmarks/batch_invariance.py [--benchmark digits] [--threads 1]

Computes the benchmark's default FM features of one training row in batches of 64
(first position), 64 (other neighbours, another position), 40, 15 and 1 -- once with
the backbone's own ``encode`` and once through the FM's backbone pass, which pads
batches smaller than ``MIN_BACKBONE_BATCH`` -- and prints whether each equals the
first bit for bit, and the largest difference (docs/performance.md, "Feature cache
on disk").
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
    batches = {"batch 64, other neighbours, position 10":
                   (torch.cat([x[100:110], x[0:1], x[110:163]]), 10),
               "batch 40": (x[0:40], 0), "batch 15": (x[0:15], 0), "batch 1": (x[0:1], 0)}
    for label, encode in (("encode", lambda b: fm.encode(b).float()),
                          ("backbone pass (padded)", fm._backbone_pass)):
        with torch.no_grad():
            reference = encode(x[0:64])[0]
            for case, (batch, row) in batches.items():
                value = encode(batch)[row]
                print(f"{label:<24} {case:<42} identical: "
                      f"{torch.equal(value, reference)!s:<5} "
                      f"max |diff| {float((value - reference).abs().max()):.2e}")

if __name__ == "__main__":
    main()
