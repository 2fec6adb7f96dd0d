"""How much the foundation models' feature cache saves on the offline benchmarks.

For each (benchmark, foundation model) pair, on the benchmark's public set:

* **cold / warm**: one shuffled pass of mini-batches through ``fm.forward`` (with
  a gradient step on the head, as distillation does) on a fresh cache, then a
  second pass in another order;
* **one-by-one round**: the passes the server's one-by-one fusion makes over the
  public set in one round -- ``epochs x teachers`` per FM part, for the global
  part and each client's personalised part, i.e. ``epochs * clients * (clients + 1)``
  passes -- timed with the cache on (starting cold) and with ``cache=false``;
* **disk**: the first pass of a second, freshly set-up model on the same on-disk
  cache folder (as a second run would: its memory is empty, the cold pass above
  wrote the features to disk), and its ``backbone_seconds`` (0: nothing computed).

Run (a few minutes on 2 CPU cores)::

    PYTHONPATH=.:plugins python benchmarks/fm_cache.py [--only langid,mnist] [--clients 3]

Numbers depend on the machine and on whatever else runs on it.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import tempfile
import time

import torch

from fclkit.interfaces import StreamSpec

PAIRS = {
    "langid": ("fclkit_builtins.text.langid:LangIDBenchmark",
               "fclkit_builtins.hf.hf:HuggingFaceFM"),
    "mnist": ("fclkit_builtins.vision.mnist:MNISTBenchmark",
              "fclkit_builtins.vision.efficientnet:EfficientNetLiteFM"),
    "digits": ("fclkit_builtins.digits.benchmark:DigitsBenchmark",
               "fclkit_builtins.vision.efficientnet:EfficientNetLiteFM"),
}


def _load(path: str):
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _passes(fm, x: torch.Tensor, passes: int, batch: int, seed: int = 0) -> float:
    opt = torch.optim.Adam(fm.trainable_parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for _ in range(passes):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch):
            loss = fm.forward(x[perm[i:i + batch]]).logsumexp(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return time.perf_counter() - start


def run(name: str, passes: int, batch: int) -> dict:
    bench, fm_path = PAIRS[name]
    stream = _load(bench)().build(StreamSpec(num_clients=3, num_tasks=5, seed=0,
                                             partition="iid", dirichlet_alpha=0.5,
                                             public_fraction=0.1))
    x = stream.public.x
    fm_cls = _load(fm_path)
    out: dict = {"benchmark": name, "fm": fm_cls.name, "rows": len(x)}
    folder = tempfile.mkdtemp(prefix="fclkit-fm-cache-")
    for cache in (True, False):
        torch.manual_seed(0)
        fm = fm_cls(fm_cls.Options(cache=cache))
        fm.set_cache_dir(folder if cache else None)
        t0 = time.perf_counter()
        fm.setup(stream.input_spec, stream.num_classes, "cpu")
        out.setdefault("setup", time.perf_counter() - t0)  # the first (cold) load
        with torch.no_grad():  # warm the kernels up, outside the timings
            fm.forward(x[:8])
        if cache:
            fm.clear_cache()
            out["cold"] = _passes(fm, x, 1, batch)
            fm.flush_cache()  # on disk now, as at the end of a run
            out["warm"] = _passes(fm, x, 1, batch, seed=1)
            fm.clear_cache()
            second = fm_cls(fm_cls.Options())  # a second run's model: empty memory
            second.set_cache_dir(folder)
            second.setup(stream.input_spec, stream.num_classes, "cpu")
            out["disk"] = _passes(second, x, 1, batch)
            out["disk_backbone"] = second.backbone_seconds
        out[f"round_{cache}"] = _passes(fm, x, passes, batch, seed=2)
        if cache:
            out["info"] = fm.cache_info()
    shutil.rmtree(folder, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(PAIRS))
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2, help="one-by-one epochs per teacher")
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    passes = args.epochs * args.clients * (args.clients + 1)
    print(f"torch threads {torch.get_num_threads()}, batch {args.batch}; one-by-one round = "
          f"{args.epochs} epochs x {args.clients} teachers x {args.clients + 1} FM parts = "
          f"{passes} passes over the public set")
    print(f"{'benchmark':<10}{'fm':<19}{'rows':>5}{'setup s':>9}{'cold s':>9}{'warm s':>9}"
          f"{'cold/warm':>11}{'round on s':>12}{'round off s':>13}{'off/on':>8}"
          f"{'disk s':>9}{'cold/disk':>11}{'disk backbone s':>17}")
    for name in [n.strip() for n in args.only.split(",") if n.strip()]:
        r = run(name, passes, args.batch)
        print(f"{r['benchmark']:<10}{r['fm']:<19}{r['rows']:>5}{r['setup']:>9.2f}"
              f"{r['cold']:>9.3f}{r['warm']:>9.4f}{r['cold'] / r['warm']:>10.0f}x"
              f"{r['round_True']:>12.2f}{r['round_False']:>13.2f}"
              f"{r['round_False'] / r['round_True']:>7.1f}x{r['disk']:>9.4f}"
              f"{r['cold'] / r['disk']:>10.0f}x{r['disk_backbone']:>17.3f}", flush=True)


if __name__ == "__main__":
    main()
