"""Time of one one-by-one fusion round against the number of clients: batched vs sequential.

One-by-one distils K teachers into K personalised FM parts and a global one:
K·(K+1) distillations of the FM's head per round. ``batched = true`` (the
default) runs the K+1 parts as one batched computation; ``batched = false``
one after the other. For each client count K this script

* builds the default experiment with K clients (digits, EfficientNet-Lite0 with its
  linear head, the digits benchmark's public set: 10 % of the 1,797 images, 143
  rows here; its backbone features are cached, so only the head trains);
* makes K synthetic uploads: small models of the benchmark's architectures
  (``mlp`` and ``cnn`` alternating: heterogeneous teachers), their weights
  perturbed at random (a different teacher per client), with different classes:
  every client has seen tasks 1 and 2, every third one also a class of task 3;
* fuses a first round (task 1, the FM parts know nothing yet) and times the second
  (task 2: the anchor is active), with each path, from the same starting state;
* compares the FM parts both paths give (every download's ``fm_state`` and the global
  part) and their classes (asserted equal). In float32 (the timed runs) the parts
  differ by rounding noise that Adam amplifies: Adam divides each element's step by
  the size of its gradient, so where a gradient is close to rounding noise, summing
  the same numbers in another order (a batched GEMM, or another thread count) moves
  the element by a fraction of an Adam step (``lr`` = 1e-3); the sequential path at 2
  threads differs from itself at 1 thread by as much (with server labels, or the MLP
  head, by up to ten steps). So the script prints that difference and then runs both
  paths again in float64 (head and features in double), where the noise is gone, and
  asserts max |difference| <= 1e-6 there.

Torch runs one thread. The fusion runs ``--epochs`` epochs per teacher (default 2,
as ``benchmarks/memory_scaling.py``; the fusion's own default is 5). The last line
printed is the batched / sequential speed ratio at 20 clients.

    PYTHONPATH=.:plugins python benchmarks/fusion_scaling.py [--clients 1 5 10 20 50]
        [--epochs 2] [--public-labels 0] [--quick]
"""

from __future__ import annotations

import argparse
import time


def experiment(clients: int, epochs: int, public_labels: int, fm_options: dict | None = None,
               **options):
    import fclkit
    from fclkit.plugins import build_registry
    from fclkit.runtime.experiment import Experiment

    config = fclkit.ExperimentConfig(clients=clients, threads=1, seed=0, client_models="mlp,cnn",
                                     public_labels=public_labels, fm_options=fm_options or {},
                                     fusion_options={"epochs": epochs, **options})
    exp = Experiment(config, build_registry())
    exp.prepare()
    return exp


def uploads(exp, task: int) -> list:
    """One synthetic upload per client: a perturbed small model, its classes."""
    import torch

    from fclkit.messages import Upload

    tasks = exp.stream.clients[0].tasks
    classes = lambda t: sorted(int(c) for c in torch.unique(tasks[t].y_train))  # noqa: E731
    out = []
    for k in exp.server.fusion.context.client_ids:
        arch = ("mlp", "cnn")[k % 2]
        model = exp.build_small_model(arch)
        gen = torch.Generator().manual_seed(1000 + k)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.5)
        seen = [c for t in range(task + 1) for c in classes(t)]
        current = classes(task)
        if k % 3 == 2 and task + 1 < len(tasks):  # a class of the next task, too
            seen.append(classes(task + 1)[0])
            current = [*current, classes(task + 1)[0]]
        out.append(Upload(client_id=k, architecture=arch, classes_seen=tuple(sorted(seen)),
                          num_examples=100, small_state=model.state_dict(),
                          metadata={"task_classes": current}))
    return out


def fuse_twice(exp, batched: bool) -> tuple[float, object]:
    """(seconds of the second round, its result), from the fusion's initial state."""
    import attrs

    from fclkit.messages import RoundInfo

    fusion = exp.server.fusion
    fusion.options = attrs.evolve(fusion.options, batched=batched)
    fusion.load_state_dict(exp.initial_fusion_state)
    fusion.fuse(RoundInfo(0, 0, 1), uploads(exp, 0), [])
    ups = uploads(exp, 1)
    t0 = time.perf_counter()
    result = fusion.fuse(RoundInfo(1, 0, 1), ups, [])
    return time.perf_counter() - t0, result


def in_float64(exp) -> None:
    """Run the FM head and its features in double precision from now on."""
    fm = exp.foundation_model
    fm.head.double()
    precompute = fm.precompute
    fm.precompute = lambda x: precompute(x).double()


def max_difference(a, b) -> float:
    """Max |difference| over every download's FM part and the global part; the classes
    must be the same."""
    diff = 0.0
    pairs = [(a.global_fm_state, b.global_fm_state)]
    assert a.global_fm_classes == b.global_fm_classes
    for k, d in a.downloads.items():
        assert d.fm_classes == b.downloads[k].fm_classes, k
        pairs.append((d.fm_state, b.downloads[k].fm_state))
    for x, y in pairs:
        assert set(x) == set(y)
        diff = max(diff, *(float((x[n] - y[n]).abs().max()) for n in x))
    return diff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 5, 10, 20, 50])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--public-labels", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="20 clients, 1 epoch")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.epochs = [20], 1
    import torch

    torch.set_num_threads(1)
    print(f"one fusion round (task 2), {args.epochs} epochs per teacher, public_labels "
          f"{args.public_labels}; seconds")
    print(f"{'clients':>7} {'distils':>7} {'sequential':>10} {'batched':>8} {'speed-up':>8} "
          f"{'max |diff| f32':>14} {'f64':>8}")
    ratios = {}
    for k in args.clients:
        exp = experiment(k, args.epochs, args.public_labels)
        exp.initial_fusion_state = exp.server.fusion.state_dict()
        batched_s, batched = fuse_twice(exp, True)
        sequential_s, sequential = fuse_twice(exp, False)
        diff = max_difference(batched, sequential)
        in_float64(exp)
        diff64 = max_difference(fuse_twice(exp, True)[1], fuse_twice(exp, False)[1])
        assert diff64 <= 1e-6, f"{k} clients: the paths differ by {diff64} (float64)"
        ratios[k] = sequential_s / batched_s
        print(f"{k:>7} {k * (k + 1):>7} {sequential_s:>10.3f} {batched_s:>8.3f} "
              f"{ratios[k]:>7.1f}x {diff:>14.1e} {diff64:>8.1e}", flush=True)
    if 20 in ratios:
        print(f"batched/sequential speed ratio at 20 clients: {ratios[20]:.2f}x")


if __name__ == "__main__":
    main()
