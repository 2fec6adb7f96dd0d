"""Start-up cost: ``fclkit --help``, a torch-free ``import fclkit``, time to the first step.

Every figure comes from fresh subprocesses (the machine's page cache is warm:
one untimed run of each command comes first):

* **``fclkit --help``**: wall time of the console script, median of ``--repeats``
  runs (target: < 0.5 s), next to a bare ``python -c pass`` for reference;
* **light import**: ``python -c "import fclkit, sys; print('torch' in sys.modules)"``
  must print ``False`` (the other heavy modules are checked too);
* **time to the first training step of a default ``fclkit run``**: the child
  process runs the CLI (``fclkit run --output TMP --threads N``, everything else
  default; ``--threads 1`` unless told otherwise, ``--threads 0`` keeps torch's
  default of one thread per core, which is slow when another process is busy)
  with the strategy's ``train_round``, the benchmark's ``build``, the foundation
  model's ``setup`` and a few runtime entry points wrapped to record
  ``time.time()``; at the first ``train_round`` call it prints the timeline and
  exits. Times are measured from just before the parent starts the child, so
  they include the interpreter's own start-up;
* for reference, standalone import times of the heavy libraries a run loads:
  torch; ``torch._dynamo``, which ``torch.optim`` imports at the first optimizer
  (any strategy); fclkit's Avalanche modules as fclkit imports them (only the
  modules a strategy needs, see ``fclkit_builtins.avalanche.lazy_import``) and as
  Avalanche's own package ``__init__`` files would (``FCLKIT_AVALANCHE_EAGER=1``).

The first step is timed with a cold feature cache (a fresh ``--cache-dir``: the
FM computes its features of the test sets) and with a warm one (a folder filled
by one short run first: they are read from disk, as in every run after the first
on the same data).

``--compare-eager`` also times the first step with ``FCLKIT_AVALANCHE_EAGER=1``
(Avalanche imported whole, as before), and ``--compare-sequential`` with
``FCLKIT_BACKGROUND_IMPORTS=0`` (the strategies' modules imported after the FM's
first pass instead of during it, see ``fclkit.runtime.preload``), alternating
with the default, so that the figures come from the same machine state.

    python benchmarks/startup.py [--repeats 5] [--first-step-repeats 3] [--compare-eager]
                                 [--compare-sequential] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HELP_TARGET = 0.5
HEAVY = ("torch", "numpy", "avalanche", "transformers", "sklearn", "rich", "typer", "pluggy",
         "attrs")


def fclkit_command() -> list[str]:
    exe = Path(sys.executable).with_name("fclkit")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "fclkit.cli"]


def wall(cmd: list[str], repeats: int) -> list[float]:
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        out.append(time.perf_counter() - t0)
    return out


# ------------------------------------------------------------ the child process


def child(output: str, threads: int, cache_dir: str) -> None:
    """Run ``fclkit run --output OUTPUT --threads N`` here; print the timeline at the first
    training step."""
    events: list[tuple[str, float]] = [("script started (interpreter up)", time.time())]

    def mark(name: str) -> None:
        events.append((name, time.time()))

    import fclkit

    mark("import fclkit")
    torch_after_import = "torch" in sys.modules
    import fclkit.cli

    mark("import fclkit.cli (typer)")
    # instrumentation: these modules are light (no torch); the run imports them anyway
    import fclkit.runtime.experiment as experiment
    import fclkit.runtime.lifecycle as lifecycle
    import fclkit_builtins.avalanche.strategies as strategies
    import fclkit_builtins.digits.benchmark
    import fclkit_builtins.local.engine as local
    import fclkit_builtins.vision.efficientnet as efficientnet

    mark("instrumentation imports (runtime + plugin modules)")

    def around(owner: object, attr: str, label: str) -> None:
        original = getattr(owner, attr)

        def wrapper(*args, **kwargs):
            mark(f"{label}: start")
            try:
                return original(*args, **kwargs)
            finally:
                mark(f"{label}: end")

        setattr(owner, attr, wrapper)

    def first_step(self, *args, **kwargs):
        mark("first train_round call")
        stamps = [(name, t) for name, t in events]
        print(json.dumps({"events": stamps, "torch_after_import_fclkit": torch_after_import,
                          "strategy": type(self).__name__}), flush=True)
        os._exit(0)

    around(lifecycle, "run", "fclkit.run")
    around(experiment.Experiment, "__init__", "Experiment (options, compatibility)")
    around(experiment.Experiment, "prepare", "prepare")
    around(lifecycle, "start_loggers", "loggers")
    around(fclkit_builtins.digits.benchmark.DigitsBenchmark, "build", "benchmark build (digits)")
    around(efficientnet.EfficientNetLiteFM, "setup", "FM setup (EfficientNet-Lite0)")
    around(local.LocalExecutor, "__init__", "build clients (strategies, Avalanche)")
    around(experiment.Experiment, "warm_up_features", "FM features of the test sets")
    around(local.LocalExecutor, "evaluate", "evaluation")
    strategies.AvalancheStrategy.train_round = first_step
    sys.argv = ["fclkit", "run", "--output", output, "--threads", str(threads),
                "--cache-dir", cache_dir]
    fclkit.cli.main()
    raise SystemExit("the run ended without calling train_round")


SWITCHES = ("FCLKIT_AVALANCHE_EAGER", "FCLKIT_BACKGROUND_IMPORTS")


def first_step_timeline(threads: int, env_set: dict[str, str] | None = None,
                        cache_dir: str | None = None) -> dict:
    """One child's timeline; ``cache_dir`` None: a fresh (cold) feature cache."""
    tmp = tempfile.mkdtemp(prefix="fclkit-startup-")
    env = {k: v for k, v in os.environ.items() if k not in SWITCHES}
    env.update(env_set or {})
    cache = cache_dir or os.path.join(tmp, "cache")
    try:
        launched = time.time()
        proc = subprocess.run([sys.executable, __file__, "--child", tmp, str(threads), cache],
                              capture_output=True, text=True, env=env)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if not lines:
            raise SystemExit(f"child failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
        data = json.loads(lines[-1])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    data["events"] = [(name, t - launched) for name, t in data["events"]]
    return data


def phases(events: list[tuple[str, float]]) -> dict[str, float]:
    """Durations between consecutive events (by the later event's name)."""
    out: dict[str, float] = {}
    prev = 0.0
    for name, t in events:
        key = name
        while key in out:  # evaluation start/end happen once before the first step
            key += "'"
        out[key] = t - prev
        prev = t
    return out


def import_time(module: str, repeats: int, pre: str = "", eager: bool = False) -> float:
    code = (f"{pre}\nimport time\nt = time.perf_counter()\nimport {module}\n"
            "print(time.perf_counter() - t)")
    env = {k: v for k, v in os.environ.items() if k != "FCLKIT_AVALANCHE_EAGER"}
    if eager:
        env["FCLKIT_AVALANCHE_EAGER"] = "1"
    subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True,
                   check=True, env=env)
    vals = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True,
                             text=True, check=True, env=env)
        vals.append(float(out.stdout.strip().splitlines()[-1]))
    return statistics.median(vals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--first-step-repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="3 repeats, 1 first-step run")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--threads", type=int, default=1,
                        help="--threads of the `fclkit run` (0: torch's default)")
    parser.add_argument("--compare-eager", action="store_true",
                        help="also time the first step with Avalanche imported whole "
                        "(FCLKIT_AVALANCHE_EAGER=1), alternating with the default")
    parser.add_argument("--compare-sequential", action="store_true",
                        help="also time the first step with FCLKIT_BACKGROUND_IMPORTS=0 "
                        "(no imports during the FM's first pass), alternating with the default")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.child[2])
        return
    if args.quick:
        args.repeats, args.first_step_repeats = 3, 1
    out: dict = {}

    py = wall([sys.executable, "-c", "pass"], args.repeats)
    helps = wall([*fclkit_command(), "--help"], args.repeats)
    out["python_pass_s"] = statistics.median(py)
    out["fclkit_help_s"] = statistics.median(helps)
    out["fclkit_help_runs_s"] = helps
    print(f"{'command':<44}{'median s':>10}{'min s':>8}{'max s':>8}")
    print(f"{'python -c pass':<44}{statistics.median(py):>10.3f}{min(py):>8.3f}{max(py):>8.3f}")
    print(f"{'fclkit --help':<44}{statistics.median(helps):>10.3f}{min(helps):>8.3f}"
          f"{max(helps):>8.3f}  target < {HELP_TARGET} s: "
          f"{'met' if statistics.median(helps) < HELP_TARGET else 'NOT met'}")

    code = ("import fclkit, sys; print('torch' in sys.modules); "
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split("\n")
    out["import_fclkit_prints"] = res[0]
    out["modules_after_import_fclkit"] = [m for m in res[1].split(",") if m]
    print(f"\npython -c \"import fclkit, sys; print('torch' in sys.modules)\" prints: {res[0]} "
          f"({'OK' if res[0] == 'False' else 'NOT OK'}); of {', '.join(HEAVY)} loaded: "
          f"{res[1] or 'none'}")

    warm_dir = tempfile.mkdtemp(prefix="fclkit-startup-cache-")
    subprocess.run([*fclkit_command(), "run", "--threads", str(args.threads), "--tasks", "1",
                    "--rounds", "1", "--loggers", "none", "--cache-dir", warm_dir,
                    "--output", os.path.join(warm_dir, "runs")], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs, eager_runs, sequential_runs, warm_runs = [], [], [], []
    for _ in range(args.first_step_repeats):
        runs.append(first_step_timeline(args.threads))
        warm_runs.append(first_step_timeline(args.threads, cache_dir=warm_dir))
        if args.compare_eager:
            eager_runs.append(first_step_timeline(args.threads, {"FCLKIT_AVALANCHE_EAGER": "1"}))
        if args.compare_sequential:
            sequential_runs.append(first_step_timeline(args.threads,
                                                       {"FCLKIT_BACKGROUND_IMPORTS": "0"}))
    shutil.rmtree(warm_dir, ignore_errors=True)
    spans = [
        ("interpreter start-up (site, .pth files)", None, "script started (interpreter up)"),
        ("import fclkit", "script started (interpreter up)", "import fclkit"),
        ("import fclkit.cli (typer)", "import fclkit", "import fclkit.cli (typer)"),
        ("[instrumentation: runtime + plugin modules]", "import fclkit.cli (typer)",
         "instrumentation imports (runtime + plugin modules)"),
        ("CLI: parse arguments, load config", "instrumentation imports (runtime + plugin modules)",
         "fclkit.run: start"),
        ("plugin registry (entry points of every distribution)", "fclkit.run: start",
         "Experiment (options, compatibility): start"),
        ("Experiment: resolve components, options", "Experiment (options, compatibility): start",
         "Experiment (options, compatibility): end"),
        ("import torch, results folder, start loggers", "Experiment (options, compatibility): end",
         "prepare: start"),
        ("  of which: start loggers (TensorBoard by default)", "loggers: start", "loggers: end"),
        ("setup: benchmark load (digits, sklearn import)", "benchmark build (digits): start",
         "benchmark build (digits): end"),
        ("setup: FM load (EfficientNet-Lite0)", "FM setup (EfficientNet-Lite0): start",
         "FM setup (EfficientNet-Lite0): end"),
        ("setup: rest (seeding, fusion set-up)", "prepare: start", "prepare: end"),
        ("build clients (Avalanche import, strategies)",
         "build clients (strategies, Avalanche): start",
         "build clients (strategies, Avalanche): end"),
        ("  of which: FM features of the test sets (imports alongside)",
         "FM features of the test sets: start", "FM features of the test sets: end"),
        ("initial evaluation (FM features of the test sets)", "evaluation: start",
         "evaluation: end"),
        ("until the first train_round call", "evaluation: end", "first train_round call"),
    ]

    def span(run: dict, start: str | None, end: str) -> float:
        ev = dict(run["events"])
        return ev[end] - (ev[start] if start else 0.0)

    spans = [sp for sp in spans if all(e is None or e in dict(runs[0]["events"])
                                       for e in sp[1:])]
    table = {}
    for label, a, b in spans:
        vals = [span(r, a, b) for r in runs]
        table[label] = statistics.median(vals)
    # "rest of set-up" = prepare minus the benchmark and the FM inside it
    table["setup: rest (seeding, fusion set-up)"] -= (
        table["setup: benchmark load (digits, sklearn import)"]
        + table["setup: FM load (EfficientNet-Lite0)"])
    first = [r["events"][-1][1] for r in runs]
    out["threads"] = args.threads
    out["first_step_s"] = statistics.median(first)
    out["first_step_runs_s"] = first
    out["first_step_phases_s"] = table
    print(f"\ntime to the first training step of `fclkit run --threads {args.threads}` "
          f"(defaults otherwise; strategy {runs[0]['strategy']}), median of {len(runs)} fresh "
          "processes, from the launch of the process:")
    for label, value in table.items():
        print(f"  {label:<58}{value:>7.2f} s")
    print(f"  {'total: launch -> first train_round':<58}{statistics.median(first):>7.2f} s  "
          f"(runs: {', '.join(f'{v:.2f}' for v in first)})")
    imports = (table["interpreter start-up (site, .pth files)"] + table["import fclkit"]
               + table["import fclkit.cli (typer)"])
    setup = sum(v for k, v in table.items() if k.startswith("setup:"))
    out["first_step_summary_s"] = {"interpreter + import fclkit + CLI": imports,
                                   "setup (benchmark + FM + rest)": setup}
    print(f"summary: interpreter + import fclkit + CLI {imports:.2f} s; setup (benchmark "
          f"load + FM load + rest) {setup:.2f} s; time to first step "
          f"{statistics.median(first):.2f} s")
    def other(key: str, label: str, what: str, these: list[dict]) -> None:
        if not these:
            return
        vals = [r["events"][-1][1] for r in these]
        build = [span(r, "build clients (strategies, Avalanche): start",
                      "build clients (strategies, Avalanche): end") for r in these]
        evaluation = [span(r, "evaluation: start", "evaluation: end") for r in these]
        out[key], out[key.replace("_s", "_runs_s")] = statistics.median(vals), vals
        print(f"{label}, alternating with the runs above: time to first step "
              f"{statistics.median(vals):.2f} s (runs: {', '.join(f'{v:.2f}' for v in vals)}), "
              f"of which build clients {statistics.median(build):.2f} s, initial evaluation "
              f"{statistics.median(evaluation):.2f} s; {what} "
              f"{statistics.median(vals) - statistics.median(first):+.2f} s")

    other("first_step_warm_cache_s", "with a warm feature cache (--cache-dir filled by one "
          "short run)", "against a cold cache:", warm_runs)
    other("first_step_sequential_imports_s", "with FCLKIT_BACKGROUND_IMPORTS=0 (imports after "
          "the FM's first pass)", "the overlap saves", sequential_runs)
    other("first_step_eager_avalanche_s", "with Avalanche imported whole "
          "(FCLKIT_AVALANCHE_EAGER=1)", "fclkit's Avalanche import saves", eager_runs)

    print("\nstandalone import times for reference (fresh process each, median of 3):")
    dynamo = "import torch, torch._dynamo"
    refs = {"torch": ("torch", "", False),
            "torch._dynamo (torch imported; torch.optim's first optimizer imports it)":
            ("torch._dynamo", "import torch", False),
            "fclkit's Avalanche modules (torch, torch._dynamo imported)":
            ("fclkit_builtins.avalanche.round_driver", dynamo, False),
            "the same, Avalanche imported whole (FCLKIT_AVALANCHE_EAGER=1)":
            ("fclkit_builtins.avalanche.round_driver", dynamo, True),
            "efficientnet_lite_pytorch (torch imported)":
            ("efficientnet_lite_pytorch", "import torch", False),
            "sklearn.datasets (a default run does not import it)": ("sklearn.datasets", "",
                                                                   False)}
    out["import_times_s"] = {}
    for label, (module, pre, eager) in refs.items():
        t = import_time(module, 3, pre, eager)
        out["import_times_s"][label] = t
        print(f"  import {label:<72}{t:>6.2f} s")

    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
