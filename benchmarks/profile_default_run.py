"""Where the default ``fclkit run`` spends its time: cProfile of the whole run.

Runs ``fclkit.run(fclkit.ExperimentConfig(), write_results=False)`` -- the
default experiment (digits, 3 clients, 5 tasks x 3 rounds, replay MLPs guided by
EfficientNet-Lite0, one-by-one fusion) -- under cProfile in this (fresh)
process, so the imports a run triggers (torch, Avalanche, ...) are included, with
torch limited to ``--threads`` threads (default 1; the configuration itself is
the default one, whose ``threads = 0`` leaves torch's setting alone). Writes
``benchmarks/profile_default_run.txt`` (or ``--output``):

* the top 25 functions by cumulative time and by own time (``tottime``);
* fclkit's, the plugins' and Avalanche's functions by cumulative time;
* a list of candidate avoidable costs (feature-cache hashing, state deep
  copies, repeated evaluation, plugin discovery, ...) with their cumulative
  time and call counts, taken from the same profile.

cProfile adds a cost per Python call, so Python-heavy code looks slower than it
is; the unprofiled wall time of the same run is measured first for reference.

    python benchmarks/profile_default_run.py [--threads 1] [--output PATH] [--json PATH]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: (label, part of the file name, function[, part of the caller's file name]) -- costs
#: worth looking at, if present; with a caller, only the calls from that caller count
CANDIDATES = [
    ("feature cache: hash every row on every FM forward",
     "fclkit/feature_cache.py", "row_keys"),
    ("feature cache: FeatureCache.features (incl. backbone passes for new rows)",
     "fclkit/feature_cache.py", "features"),
    ("torch.stack of per-row cached features into batches", "~",
     "<built-in method torch.stack>"),
    ("FM forward (cache + head), all callers", "fclkit/foundation.py", "forward"),
    ("backbone passes (EfficientNet, rows not cached yet)", "fclkit/foundation.py",
     "_backbone_pass"),
    ("client guidance term (FM forward per mini-batch)",
     "plugins/fclkit_builtins/one_by_one/guidance.py", "fm_guidance"),
    ("Client.fit_guarded deep copy of every client's state before each round",
     "copy.py", "deepcopy", "fclkit/runtime/client.py"),
    ("Client.state_dict (clones model + strategy state)", "fclkit/runtime/client.py",
     "state_dict"),
    ("Avalanche strategy state_dict (replay buffer as tensors)",
     "plugins/fclkit_builtins/avalanche/round_driver.py", "state_dict"),
    ("replay buffer -> tensors item by item", "plugins/fclkit_builtins/avalanche/state_codec.py",
     "dataset_state"),
    ("evaluation of every model on every task (incl. first backbone pass over the test "
     "sets, and fm_global once per client)",
     "fclkit/runtime/client.py", "evaluate"),
    ("one-by-one: teacher logits (builds a fresh small model per upload)",
     "plugins/fclkit_builtins/one_by_one/fusion.py", "_teacher_logits"),
    ("one-by-one: distillation loops", "plugins/fclkit_builtins/one_by_one/fusion.py",
     "_distil"),
    ("kd_loss, all calls (server distillation + client guidance)",
     "plugins/fclkit_builtins/one_by_one/distillation.py", "kd_loss"),
    ("update validation (isfinite over every upload)", "fclkit/validation.py", "check"),
    ("plugin discovery (entry points of every installed distribution)",
     "fclkit/plugins.py", "build_registry"),
    ("Avalanche: plugin callbacks (trigger_plugins, incl. the guidance term)",
     "avalanche/training/utils.py", "trigger_plugins"),
    ("Avalanche: training epochs (data loading + steps)",
     "avalanche/training/templates/update_type/sgd_update.py", "training_epoch"),
    ("Avalanche: experience set-up per round (_before_training_exp)",
     "avalanche/training/templates/base_sgd.py", "_before_training_exp"),
    ("Avalanche: collate of mini-batches", "avalanche/benchmarks/utils/collate_functions.py",
     "__call__"),
    ("imports during the run (torch, Avalanche and what it pulls in, sklearn, ...)",
     "<frozen importlib._bootstrap>", "_find_and_load"),
]

#: derived figures: (label, minuend label, subtrahend labels) over CANDIDATES' cumulative s
DERIVED = [
    ("=> feature-cache overhead: hashing + look-up + stacking (cache minus backbone)",
     "feature cache: FeatureCache.features (incl. backbone passes for new rows)",
     ["backbone passes (EfficientNet, rows not cached yet)"]),
    ("=> Avalanche callback machinery without the guidance term",
     "Avalanche: plugin callbacks (trigger_plugins, incl. the guidance term)",
     ["client guidance term (FM forward per mini-batch)"]),
]


def short_name(file: str, root: str) -> str:
    if file.startswith(root):
        return file[len(root):]
    if "site-packages/" in file:
        return file.split("site-packages/", 1)[1]
    return file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=str(HERE / "profile_default_run.txt"))
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--no-reference", action="store_true",
                        help="skip the unprofiled reference run")
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    import fclkit

    root = str(Path(fclkit.__file__).resolve().parents[1]) + "/"
    config = fclkit.ExperimentConfig()

    prof = cProfile.Profile()
    started = time.perf_counter()
    prof.enable()
    import torch  # inside the profile: a default run imports it too

    torch.set_num_threads(args.threads)
    result = fclkit.run(config, write_results=False)
    prof.disable()
    profiled = time.perf_counter() - started
    reference = None
    if not args.no_reference:  # same run, unprofiled, imports already done
        t0 = time.perf_counter()
        again = fclkit.run(config, write_results=False)
        reference = time.perf_counter() - t0
        assert again.accuracy_matrix() == result.accuracy_matrix()

    stats = pstats.Stats(prof)
    entries = []
    for (file, line, func), (_cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        entries.append({"file": short_name(file, root), "line": line, "function": func,
                        "calls": nc, "own_s": tt, "cum_s": ct})

    def fmt(rows, title):
        lines = [title, f"{'cum s':>9}{'own s':>9}{'calls':>10}  function"]
        for e in rows:
            lines.append(f"{e['cum_s']:>9.3f}{e['own_s']:>9.3f}{e['calls']:>10}  "
                         f"{e['file']}:{e['line']}:{e['function']}")
        return lines

    by_cum = sorted(entries, key=lambda e: -e["cum_s"])[:25]
    by_own = sorted(entries, key=lambda e: -e["own_s"])[:25]
    ours = [e for e in entries
            if e["file"].startswith(("fclkit/", "plugins/", "avalanche/"))]
    ours_cum = sorted(ours, key=lambda e: -e["cum_s"])[:40]

    candidates = []
    for label, file_part, func, *caller in CANDIDATES:
        hits = [e for e in entries if file_part in e["file"] and e["function"] == func]
        if not hits:
            continue
        cum = sum(e["cum_s"] for e in hits)
        calls = sum(e["calls"] for e in hits)
        if caller:  # only the calls made from the given caller
            cum = calls = 0
            for (file, _line, f), row in stats.stats.items():  # type: ignore[attr-defined]
                if file_part in file and f == func:
                    for (cfile, _cl, _cf), (_cc, nc, _tt, ct) in row[4].items():
                        if caller[0] in cfile:
                            cum += ct
                            calls += nc
        where = ", ".join(f"{e['file']}:{e['line']}" for e in hits[:3])
        candidates.append({"label": label, "where": where, "cum_s": cum, "calls": calls})
    by_label = {c["label"]: c for c in candidates}
    for label, plus, minus in DERIVED:
        if plus in by_label and all(m in by_label for m in minus):
            value = by_label[plus]["cum_s"] - sum(by_label[m]["cum_s"] for m in minus)
            candidates.append({"label": label, "where": by_label[plus]["where"],
                               "cum_s": value, "calls": by_label[plus]["calls"]})

    m = result.metrics
    t = m["timings_seconds"]
    header = [
        "cProfile of the default `fclkit run`: fclkit.run(fclkit.ExperimentConfig(), "
        "write_results=False)",
        f"generated by benchmarks/profile_default_run.py on {time.strftime('%Y-%m-%d %H:%M')}, "
        f"python {sys.version.split()[0]}, torch {torch.__version__}, torch threads "
        f"{args.threads}",
        f"config: benchmark {config.benchmark}, cl {config.cl}, fusion {config.fusion}, "
        f"fm {result.config.fm}, clients {config.clients}, tasks {config.tasks}, rounds "
        f"{config.rounds}, epochs {config.epochs}",
        f"wall time under the profiler (imports of torch/Avalanche included): {profiled:.2f} s"
        + (f"; same run unprofiled (imports done): {reference:.2f} s" if reference else ""),
        "fclkit's own timings of the profiled run: "
        + ", ".join(f"{k} {v:.2f} s" for k, v in t.items()),
        "final mean accuracy: small {:.1%}, fm {:.1%}, fm_global {:.1%}".format(
            *(m["mean"][k]["average_accuracy"] for k in ("small", "fm", "fm_global"))),
        "",
    ]
    text = header + fmt(by_cum, "== top 25 by cumulative time ==") + [""]
    text += fmt(by_own, "== top 25 by own time (tottime) ==") + [""]
    text += fmt(ours_cum, "== fclkit / plugins / Avalanche functions by cumulative time "
                "(top 40) ==") + [""]
    text += ["== candidate avoidable costs (cumulative seconds in this profile; nested "
             "entries overlap) =="]
    for c in candidates:
        text.append(f"{c['cum_s']:>9.3f} s {c['calls']:>9} calls  {c['label']}  [{c['where']}]")
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_callers(
        r"feature_cache.py.*\(row_keys\)|copy.py.*\(deepcopy\)|client.py.*\(evaluate\)")
    text += ["", "== callers of row_keys / deepcopy / Client.evaluate ==",
             *[ln.replace(root, "") for ln in buf.getvalue().splitlines()
               if ln.strip() and "Ordered by" not in ln and "restriction" not in ln]]
    Path(args.output).write_text("\n".join(text) + "\n")
    print("\n".join(header))
    print("\n".join(fmt(by_cum[:10], "top 10 by cumulative time:")))
    print("\n".join(fmt(by_own[:10], "top 10 by own time:")))
    print("candidate avoidable costs (cumulative s, calls):")
    for c in candidates:
        print(f"  {c['cum_s']:>7.2f} s {c['calls']:>8}  {c['label']}")
    print(f"wrote {args.output}")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"profiled_wall_s": profiled, "reference_wall_s": reference, "timings": t,
             "top_cumulative": by_cum, "top_own": by_own, "candidates": candidates},
            indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
