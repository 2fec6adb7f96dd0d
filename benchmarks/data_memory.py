"""Peak memory and time of a run on data sets that are large for this machine: all 70,000
Fashion-MNIST images, and a generated folder of 100,000 images (``imagefolder``).

Images stay ``uint8`` in the stream (a quarter of their float32 size; every model reads
them as float32 in ``[0, 1]`` a batch at a time, ``fclkit.stream.images_as_float``), so
the target is a peak RSS of at most 1.5 GiB plus the size of the FM's cached features.

Each case runs ``fclkit.run`` in a fresh subprocess (torch threads = 1, no results
folder, no disk feature cache) and reports its peak RSS (``getrusage`` of that child),
the bytes of its images as uint8 and as float32 would be, the bytes of the FM's cached
features at the end, and the run's timings:

* ``fmnist``: ``split-fmnist`` with every image (``train_per_class=0``, the Debian
  package's files; ``apt-get install dataset-fashion-mnist``), FedAvg x naive (the data
  path alone, no FM);
* ``fmnist-fm``: the same with the default method (one-by-one x replay, the
  EfficientNet-Lite0 FM at 64 px: every training, public and test image passes the
  backbone once);
* ``folder``: ``imagefolder`` over ``--images`` generated RGB PNGs of ``--size`` px in
  10 class folders (made once under ``--folder``), FedAvg x naive;
* ``folder-fm``: the same with the default method.

    python benchmarks/data_memory.py [--cases fmnist folder fmnist-fm folder-fm]
        [--images 100000] [--size 32] [--folder /tmp/fclkit-images-100000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

GiB, MiB = 2**30, 2**20
TARGET = 1.5 * GiB


def make_folder(folder: Path, images: int, size: int, classes: int = 10) -> None:
    """``images`` RGB PNGs in ``classes`` folders: a bright block at a place of its class
    (one of a 4 x 4 grid) on a background of a colour of its class, and noise; made once
    (a marker file records the count)."""
    import numpy as np
    from PIL import Image

    marker = folder / ".made"
    if marker.exists() and marker.read_text() == f"blocks {images} {size} {classes}":
        return
    rng = np.random.default_rng(0)
    colours = rng.integers(40, 216, (classes, 3))
    t0 = time.perf_counter()
    for c in range(classes):
        (folder / f"class_{c}").mkdir(parents=True, exist_ok=True)
    cell = size // 4
    for i in range(images):
        c = i % classes
        arr = colours[c][None, None, :] + rng.normal(0, 30, (size, size, 3))
        row, col = divmod(c * 16 // classes, 4)
        arr[row * cell:(row + 1) * cell, col * cell:(col + 1) * cell] += 120
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(
            folder / f"class_{c}" / f"{i:06d}.png")
    marker.write_text(f"blocks {images} {size} {classes}")
    print(f"made {images} images in {folder} ({time.perf_counter() - t0:.0f} s)", flush=True)


def child(case: dict) -> None:
    """Run one case in this process; print its figures as one JSON line."""
    import resource
    import warnings

    warnings.simplefilter("ignore")
    import torch

    import fclkit
    from fclkit.foundation import FrozenBackboneFoundationModel

    fms: list = []
    original_setup = FrozenBackboneFoundationModel.setup

    def setup(self, *args, **kwargs):
        fms.append(self)
        return original_setup(self, *args, **kwargs)

    FrozenBackboneFoundationModel.setup = setup
    captured: dict = {}
    from fclkit.runtime import experiment as experiment_module

    original_prepare = experiment_module.Experiment.prepare

    def prepare(self):
        original_prepare(self)
        s = self.stream
        tensors = {id(t.x_train): t.x_train for c in s.clients for t in c.tasks}
        tensors.update({id(t.x_test): t.x_test for c in s.clients for t in c.tasks})
        if s.public is not None:
            tensors[id(s.public.x)] = s.public.x
        captured["image_bytes"] = sum(t.numel() * t.element_size() for t in tensors.values())
        captured["float_bytes"] = sum(t.numel() * 4 for t in tensors.values())
        captured["dtype"] = str(next(iter(tensors.values())).dtype)
        captured["rss_after_setup"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    experiment_module.Experiment.prepare = prepare
    t0 = time.perf_counter()
    result = fclkit.run(fclkit.ExperimentConfig(**case["config"]), write_results=False)
    wall = time.perf_counter() - t0
    features = 0
    for fm in fms:
        store = getattr(getattr(fm, "_cache", None), "_store", {})
        features += sum(t.numel() * t.element_size() for t in store.values()
                        if isinstance(t, torch.Tensor))
    m = result.metrics
    print(json.dumps({
        **captured, "features_bytes": features, "wall_s": wall,
        "timings": m.get("timings_seconds", {}),
        "accuracy": {k: m["mean"][k]["average_accuracy"] for k in m["models"]}}))


CASES = {
    "fmnist": ("split-fmnist", {"train_per_class": 0}, "fedavg", "naive"),
    "fmnist-fm": ("split-fmnist", {"train_per_class": 0}, "one-by-one", "replay"),
    "folder": ("imagefolder", {}, "fedavg", "naive"),
    "folder-fm": ("imagefolder", {}, "one-by-one", "replay"),
}


def run_case(name: str, folder: Path, size: int) -> dict:
    benchmark, options, fusion, cl = CASES[name]
    if benchmark == "imagefolder":
        options = {"path": str(folder), "image_size": size, "channels": 3}
    config = {"benchmark": benchmark, "benchmark_options": options, "fusion": fusion,
              "cl": cl, "rounds": 1, "epochs": 1, "threads": 1, "loggers": ["none"],
              "checkpoint": False, "cache_dir": "none", "seed": 0}
    proc = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(
        {"config": config})], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        sys.exit(f"case {name} failed (status {status})")
    figures = json.loads(out.strip().splitlines()[-1])
    figures["peak_rss"] = usage.ru_maxrss * 1024  # KiB on Linux
    figures["case"] = name
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=["fmnist", "folder"], choices=CASES)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--folder", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    folder = args.folder or Path(f"/tmp/fclkit-images-{args.images}-{args.size}")
    if any(c.startswith("folder") for c in args.cases):
        make_folder(folder, args.images, args.size)
    rows = []
    print(f"{'case':<10} {'images':>10} {'as float32':>10} {'features':>9} {'peak RSS':>9} "
          f"{'target':>8} {'met':>4} {'setup s':>8} {'total s':>8}  accuracy")
    for name in args.cases:
        r = run_case(name, folder, args.size)
        rows.append(r)
        target = TARGET + r["features_bytes"]
        acc = " ".join(f"{k} {100 * v:.1f}" for k, v in r["accuracy"].items())
        print(f"{name:<10} {r['image_bytes'] / MiB:>7.0f} MiB {r['float_bytes'] / MiB:>6.0f} MiB "
              f"{r['features_bytes'] / MiB:>5.0f} MiB {r['peak_rss'] / GiB:>5.2f} GiB "
              f"{target / GiB:>4.2f} GiB {'yes' if r['peak_rss'] <= target else 'NO':>4} "
              f"{r['timings'].get('setup', 0):>8.1f} {r['timings'].get('total', 0):>8.1f}  "
              f"{acc} ({r['dtype']})", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
