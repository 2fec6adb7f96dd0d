"""Wall-time overhead of fclkit's Avalanche strategies over Avalanche used directly.

Both sides do identical work: the same model initialisation, data (scikit-learn's
digits cut into 3 class-incremental tasks), epochs, batch size, optimizer and
seeds; fclkit trains each task in one round (``rounds_per_task == 1``), the
direct side calls ``strategy.train(experience)`` on a ``tensors_benchmark``.
Building the strategy and the experiences is timed on both sides. Runs
alternate in one process (after a warm-up of each), and the script checks that
both sides end with identical weights. Target: ratio fclkit/direct <= 1.10.

    PYTHONPATH=.:plugins python benchmarks/avalanche_overhead.py [--repeats 7] [--epochs 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
import torch
from torch import nn

GROUPS = ((0, 1, 2), (3, 4, 5), (6, 7, 8, 9))


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def direct_strategies():
    """fclkit name -> (Avalanche class, kwargs) with fclkit's default options."""
    from avalanche.training.supervised import DER, EWC, GEM, MAS, LwF, Naive, Replay

    return {
        "naive": (Naive, {}),
        "ewc": (EWC, {"ewc_lambda": 100.0, "mode": "separate", "decay_factor": None}),
        "lwf": (LwF, {"alpha": 1.0, "temperature": 2.0}),
        "replay": (Replay, {"mem_size": 200}),
        "mas": (MAS, {"lambda_reg": 0.05, "alpha": 0.5}),
        "gem": (GEM, {"patterns_per_exp": 64, "memory_strength": 0.5}),
        "der": (DER, {"mem_size": 200, "alpha": 0.1, "beta": 0.5}),
    }


def run_fclkit(name, tasks, context, epochs):
    from fclkit.messages import RoundInfo
    from fclkit_builtins.avalanche.strategies import STRATEGIES

    cls = {c.name: c for c in STRATEGIES}[name]
    model = make_model()
    start = time.perf_counter()
    strategy = cls(model, None, context)
    training = 0.0
    for t, task in enumerate(tasks):
        torch.manual_seed(1000 + t)
        tick = time.perf_counter()
        strategy.train_round(task, round_info=RoundInfo(t, 0, 1), epochs=epochs)
        training += time.perf_counter() - tick
    return time.perf_counter() - start, training, model


SAME_EXPERIENCES = False  # --same-experiences: direct side trains on fclkit's experience objects


def run_direct(name, tasks, context, epochs):
    from avalanche.benchmarks import tensors_benchmark
    from avalanche.training.plugins import EvaluationPlugin

    cls, kwargs = direct_strategies()[name]
    model = make_model()
    start = time.perf_counter()
    if SAME_EXPERIENCES:  # isolates the driver's own cost from the data containers' cost
        from fclkit_builtins.avalanche.round_driver import make_experience

        experiences = [make_experience(t) for t in tasks]
    else:
        experiences = tensors_benchmark(
            train_tensors=[(t.x_train, t.y_train) for t in tasks],
            test_tensors=[(t.x_test, t.y_test) for t in tasks],
            task_labels=[0] * len(tasks)).train_stream
    optimizer = torch.optim.SGD(model.parameters(), lr=context.lr, momentum=context.momentum,
                                weight_decay=context.weight_decay)
    strategy = cls(model=model, optimizer=optimizer, criterion=nn.CrossEntropyLoss(),
                   train_mb_size=context.batch_size, train_epochs=epochs,
                   eval_mb_size=context.batch_size, device=context.device,
                   evaluator=EvaluationPlugin(loggers=[]), eval_every=-1, **kwargs)
    training = 0.0
    for t, exp in enumerate(experiences):
        torch.manual_seed(1000 + t)
        tick = time.perf_counter()
        with warnings.catch_warnings(record=True):  # Avalanche's own deprecation notices
            strategy.train(exp, eval_streams=[])
        training += time.perf_counter() - tick
    return time.perf_counter() - start, training, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", default="naive,ewc,lwf,replay,mas,gem,der")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--same-experiences", action="store_true",
                        help="direct side trains on fclkit's experience objects instead of a "
                        "tensors_benchmark (measures the round driver alone)")
    args = parser.parse_args()
    global SAME_EXPERIENCES
    SAME_EXPERIENCES = args.same_experiences
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)

    import sys
    from pathlib import Path

    from fclkit.interfaces import TrainContext

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from digits_tasks import digits_tasks  # the test helper (tests/digits_tasks.py)

    tasks = digits_tasks(GROUPS)
    context = TrainContext(device="cpu", seed=0, num_classes=10, batch_size=args.batch_size,
                           lr=0.05, optimizer="sgd", momentum=0.9, weight_decay=0.0)
    names = [n.strip() for n in args.strategies.split(",") if n.strip()]
    print(f"digits, {len(tasks)} tasks, {sum(t.num_train for t in tasks)} training examples, "
          f"{args.epochs} epochs, batch {args.batch_size}, {args.repeats} alternating repeats; "
          f"direct side on {'fclkit' if SAME_EXPERIENCES else 'tensors_benchmark'} experiences")
    print("times are medians in seconds; 'total' includes building the strategy and the "
          "experiences, 'train' is the training calls only")
    print(f"{'strategy':<9}{'fclkit total':>13}{'direct total':>13}{'ratio':>7}"
          f"{'fclkit train':>13}{'direct train':>13}{'ratio':>7}  same weights")
    sums = np.zeros(4)
    for name in names:
        run_fclkit(name, tasks, context, args.epochs)  # warm-up (imports, caches)
        run_direct(name, tasks, context, args.epochs)
        rows = []
        same = True
        for i in range(args.repeats):
            order = (run_fclkit, run_direct) if i % 2 == 0 else (run_direct, run_fclkit)
            results = {fn: fn(name, tasks, context, args.epochs) for fn in order}
            (tot_f, tr_f, model_f), (tot_d, tr_d, model_d) = (
                results[run_fclkit], results[run_direct])
            rows.append((tot_f, tot_d, tr_f, tr_d))
            same &= all(torch.equal(a, b) for a, b in zip(
                model_f.state_dict().values(), model_d.state_dict().values(), strict=True))
        med = np.array([statistics.median(col) for col in zip(*rows, strict=True)])
        sums += med
        print(f"{name:<9}{med[0]:>13.3f}{med[1]:>13.3f}{med[0] / med[1]:>7.3f}"
              f"{med[2]:>13.3f}{med[3]:>13.3f}{med[2] / med[3]:>7.3f}  {same}")
    print(f"{'all':<9}{sums[0]:>13.3f}{sums[1]:>13.3f}{sums[0] / sums[1]:>7.3f}"
          f"{sums[2]:>13.3f}{sums[3]:>13.3f}{sums[2] / sums[3]:>7.3f}  (target ratio <= 1.10)")


if __name__ == "__main__":
    main()
