"""The comparison: one-by-one distillation against the baselines, over several seeds.

    python examples/compare.py --benchmark digits --seeds 0 1 2 --public-labels 5 --sweep 1 1000

For each benchmark and seed it runs

* the method: ``--fusion one-by-one`` with each of naive / ewc / lwf / replay, with
  homogeneous small models and with heterogeneous ones;
* the baselines: FedAvg fine-tuning (fedavg x naive), FedLwF (fedavg x lwf),
  FedEWC (fedavg x ewc), and the foundation model without private data
  (``fm-only``),

with the server holding ``--public-labels`` labelled examples per class of its public set
(the same labels for the method and for ``fm-only``; the rest of the public set is
unlabelled). ``--sweep`` adds runs of ``one-by-one x replay`` and ``fm-only`` at other
label budgets: where the FM alone catches up with the method.

It writes ``docs/results.md`` (or ``--doc``): mean ± std over seeds of the final
average accuracy and average forgetting of every evaluated model, a figure, the
label sweep, a check of the goal computed from the table, and the command that
made them. Every run's results folder stays under ``--output`` (``fclkit report``
draws any of them); finished runs found there are reused.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import fclkit

SMALL_MODELS = {  # homogeneous, heterogeneous
    "digits": ("mlp", "mlp,cnn,lenet"),
    "mnist": ("cnn", "mlp,cnn,lenet"),
    "langid": ("text-cnn", "text-bow,text-cnn,text-gru"),
}
METHOD = [("one-by-one", cl) for cl in ("naive", "ewc", "lwf", "replay")]
BASELINES = [("fedavg", "naive", "FedAvg fine-tuning"), ("fedavg", "lwf", "FedLwF"),
             ("fedavg", "ewc", "FedEWC"), ("fm-only", "naive", "FM without private data")]
MODELS = ("fm", "fm_global", "small")
LABELS = {"fm": "personalised FM", "fm_global": "global FM", "small": "small models"}


SWEPT = ("one-by-one × replay", "FM without private data")


def plan(benchmark: str, labels: int, sweep: list[int]) -> list[dict]:
    homo, hetero = SMALL_MODELS[benchmark]
    runs = []
    for models, kind in ((homo, "homogeneous"), (hetero, "heterogeneous")):
        for fusion, cl in METHOD:
            runs.append({"label": f"one-by-one × {cl}", "fusion": fusion, "cl": cl,
                         "client_models": models, "models": kind, "labels": labels})
    for fusion, cl, label in BASELINES:
        runs.append({"label": label, "fusion": fusion, "cl": cl, "client_models": homo,
                     "models": "homogeneous", "labels": labels})
    for budget in sweep:
        if budget != labels:
            runs += [{**r, "labels": budget} for r in list(runs)
                     if r["label"] in SWEPT and r["models"] == "homogeneous"
                     and r["labels"] == labels]
    return runs


#: config fields added after runs were made, whose default changes nothing
NEUTRAL_NEW_FIELDS = ("grad_clip",)


@functools.cache
def _registry() -> Any:
    """The installed components, discovered once for every run checked."""
    from fclkit.plugins import build_registry

    return build_registry()


def check_reusable(run_dir: Path, config: fclkit.ExperimentConfig) -> None:
    """Refuse to reuse a finished run made with another configuration (e.g. other
    ``--set`` values, or a default that changed since): its results would be passed
    off as this comparison's."""
    import tomllib

    saved = tomllib.loads((run_dir / "config.toml").read_text())
    wanted = config.to_dict()
    # 'auto' is resolved in the saved file: compare those fields only when not 'auto'
    resolved = [k for k in ("fm", "client_models") if "auto" in
                ((wanted[k],) if isinstance(wanted[k], str) else wanted[k])]
    # fields added later whose default reproduces what runs did before they existed
    for key in NEUTRAL_NEW_FIELDS:
        if key not in saved and wanted.get(key) == fclkit.config.FIELDS[key].default:
            saved[key] = wanted[key]
    differ = sorted(k for k in wanted if k not in resolved and saved.get(k) != wanted[k])
    # component options, defaults included (older runs' run.json did not record them)
    from fclkit.kinds import by_name
    from fclkit.runtime.experiment import Experiment

    recorded = {(c["kind"], c["name"]): c.get("options")
                for c in json.loads((run_dir / "run.json").read_text())["components"]}
    unchecked = []
    for now in Experiment(config, _registry()).components.records():
        then = recorded.get((now["kind"], now["name"]))
        if then is not None:  # options older runs set as top-level fields (e.g. guidance_*)
            table = by_name()[now["kind"]].options_field
            then = {**{key: saved[old] for old, (t, key) in
                       fclkit.config.DEPRECATED_FIELDS.items()
                       if t == table and old in saved and key in now["options"]}, **then}
        if then is None:
            unchecked.append(f"{now['kind']} {now['name']!r}")
        elif then != now["options"]:
            changed = sorted(k for k in now["options"] if then.get(k) != now["options"][k])
            differ += [f"{now['kind']} option {k}" for k in changed]
            saved.update({f"{now['kind']} option {k}": then.get(k) for k in changed})
            wanted.update({f"{now['kind']} option {k}": now["options"][k] for k in changed})
    if unchecked:
        print(f"warning: {run_dir.name} records no options of {', '.join(unchecked)} "
              "(made by an older fclkit); reused unchecked", flush=True)
    if differ:
        shown = ", ".join(f"{k}: {saved.get(k, '(absent)')!r} there, {wanted[k]!r} now"
                          for k in differ[:4])
        sys.exit(f"error: {run_dir} was made with another configuration ({shown}); "
                 "pass another --output, or move that folder away to rerun it")


def run_all(benchmarks: list[str], seeds: list[int], output: Path, overrides: dict,
            labels: int, sweep: list[int], reuse_only: bool = False) -> list:
    rows = []
    total = sum(len(plan(b, labels, sweep)) for b in benchmarks) * len(seeds)
    done = 0
    for benchmark in benchmarks:
        for spec in plan(benchmark, labels, sweep):
            for seed in seeds:
                name = (f"{benchmark}-L{spec['labels']}-{spec['fusion']}-{spec['cl']}-"
                        f"{spec['models'][:6]}-s{seed}")
                metrics_path = output / name / "metrics.json"
                config = fclkit.ExperimentConfig(
                    benchmark=benchmark, fusion=spec["fusion"], cl=spec["cl"],
                    client_models=spec["client_models"], seed=seed,
                    public_labels=spec["labels"], output=str(output), name=name,
                    **overrides)
                if metrics_path.exists():  # resume an interrupted comparison
                    check_reusable(output / name, config)
                    metrics = json.loads(metrics_path.read_text())
                elif reuse_only:
                    print(f"not run yet, left out: {name}", flush=True)
                    done += 1
                    continue
                else:
                    started = time.perf_counter()
                    metrics = fclkit.run(config).metrics
                    print(f"[{done + 1}/{total}] {name}: "
                          f"{time.perf_counter() - started:.0f}s", flush=True)
                done += 1
                rows.append({**spec, "benchmark": benchmark, "seed": seed,
                             "seconds": metrics.get("timings_seconds", {}).get("total", 0.0),
                             "results": {m: {"accuracy": metrics["mean"][m]["average_accuracy"],
                                             "forgetting": metrics["mean"][m][
                                                 "average_forgetting"]}
                                         for m in metrics["models"]}})
    return rows


def _cell(values: list[float]) -> str:
    if not values:
        return "–"
    mean = 100 * statistics.fmean(values)
    std = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.1f} ± {std:.1f}"


def summarise(rows: list[dict]) -> dict:
    groups: dict[tuple, dict] = {}
    for r in rows:
        key = (r["benchmark"], r["label"], r["models"], r["labels"])
        g = groups.setdefault(key, {m: {"accuracy": [], "forgetting": []} for m in MODELS})
        for m, res in r["results"].items():
            g[m]["accuracy"].append(res["accuracy"])
            if res["forgetting"] is not None:
                g[m]["forgetting"].append(res["forgetting"])
    return groups


def _mean(values: list[float]) -> float | None:
    return 100 * statistics.fmean(values) if values else None


def goal_check(groups: dict, benchmark: str, labels: int) -> list[str]:
    """The team's goal, checked from the table: the method's personalised FM at least 5
    points above every baseline with lower forgetting; heterogeneous models cost <= 2."""
    def get(label: str, models: str = "homogeneous") -> dict | None:
        return groups.get((benchmark, label, models, labels))

    method = max((f"one-by-one × {cl}" for _, cl in METHOD if get(f"one-by-one × {cl}")),
                 key=lambda lab: _mean(get(lab)["fm"]["accuracy"]) or 0.0, default=None)
    if method is None:
        return []
    m = get(method)
    acc, forg = _mean(m["fm"]["accuracy"]), _mean(m["fm"]["forgetting"])
    lines = [f"Goal check (computed from the table above): the best method row, **{method}**, "
             f"personalised FM {acc:.1f} % (forgetting {forg:.1f} %), against each baseline "
             "(FedAvg baselines have no FM: their small models count).", "",
             "| baseline | its accuracy | margin | ≥ 5 points? | its forgetting | method's "
             "forgetting lower? |", "|---|---|---|---|---|---|"]
    for _, _, label in BASELINES:
        b = get(label)
        if b is None:
            continue
        model = "fm" if b["fm"]["accuracy"] else "small"
        b_acc, b_forg = _mean(b[model]["accuracy"]), _mean(b[model]["forgetting"])
        lines.append(f"| {label} | {b_acc:.1f} | {acc - b_acc:+.1f} | "
                     f"{'yes' if acc - b_acc >= 5 else '**no**'} | {b_forg:.1f} | "
                     f"{'yes' if forg < b_forg else '**no**'} |")
    hetero = get(method, "heterogeneous")
    if hetero is not None:
        h_acc = _mean(hetero["fm"]["accuracy"])
        cost = acc - h_acc
        lines += ["", f"Heterogeneous small models: {h_acc:.1f} % against {acc:.1f} % "
                  f"homogeneous, a cost of {cost:+.1f} points "
                  f"({'within' if cost <= 2 else '**over**'} the 2-point limit)."]
    return lines + [""]


def sweep_table(groups: dict, benchmark: str) -> list[str]:
    budgets = sorted({k[3] for k in groups if k[0] == benchmark and k[1] in SWEPT})
    if len(budgets) < 2:
        return []
    lines = ["How the comparison depends on the server's labels (homogeneous small models; "
             "labels per class of the public set, the same for both):", "",
             "| labels per class | FM without private data | one-by-one × replay: "
             "personalised FM | global FM | difference |", "|---|---|---|---|---|"]
    for n in budgets:
        base = groups.get((benchmark, SWEPT[1], "homogeneous", n))
        meth = groups.get((benchmark, SWEPT[0], "homogeneous", n))
        if meth is None:
            continue
        diff = "–"
        if base is not None and base["fm"]["accuracy"]:
            diff = f"{_mean(meth['fm']['accuracy']) - _mean(base['fm']['accuracy']):+.1f}"
        lines.append(f"| {n} | {_cell(base['fm']['accuracy']) if base else '– (needs labels)'}"
                     f" | {_cell(meth['fm']['accuracy'])} | "
                     f"{_cell(meth['fm_global']['accuracy'])} | {diff} |")
    return lines + [""]


def figure(groups: dict, benchmark: str, labels: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in groups if k[0] == benchmark and k[3] == labels]
    labels = [f"{k[1]}\n({k[2]})" for k in keys]
    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(keys)), 4.5))
    width = 0.27
    for i, m in enumerate(MODELS):
        means = [100 * statistics.fmean(groups[k][m]["accuracy"])
                 if groups[k][m]["accuracy"] else 0 for k in keys]
        stds = [100 * statistics.stdev(groups[k][m]["accuracy"])
                if len(groups[k][m]["accuracy"]) > 1 else 0 for k in keys]
        ax.bar([x + (i - 1) * width for x in range(len(keys))], means, width, yerr=stds,
               label=LABELS[m], capsize=2)
    ax.set_xticks(range(len(keys)), labels, rotation=45, ha="right", fontsize=8)
    ax.set(ylabel="final average accuracy (%)", ylim=(0, 100),
           title=f"{benchmark}: final average accuracy (mean ± std over seeds)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


ANALYSIS = "<!-- analysis: kept when the tables are refreshed -->"


def write_doc(groups: dict, benchmarks: list[str], seeds: list[int], doc: Path,
              command: str, seconds: float, labels: int) -> None:
    kept = ""
    if doc.exists() and ANALYSIS in doc.read_text(encoding="utf-8"):
        kept = doc.read_text(encoding="utf-8").split(ANALYSIS, 1)[1]
    figures = doc.parent / "results"
    figures.mkdir(parents=True, exist_ok=True)
    lines = ["# Results: does the method work?", "",
             "<!-- written by examples/compare.py; rerun it to refresh -->", "",
             f"Made by `{command}`: {seconds / 60:.0f} minutes of runs on a 2-core CPU machine "
             f"(seeds {', '.join(map(str, seeds))}; fclkit {fclkit.__version__}).", "",
             "Final average accuracy and average forgetting, in %, mean ± std over seeds "
             "(each seed: mean over clients). '–': the run has no such model (FedAvg "
             f"baselines have no foundation model). The server holds {labels} labelled "
             "examples per class of its public set (`public_labels`), for the method and "
             "for `fm-only` alike; the rest of the public set is unlabelled.", ""]
    for b in benchmarks:
        figure(groups, b, labels, figures / f"{b}-accuracy.png")
        lines += [f"## {b}", "",
                  "| run | small models | personalised FM acc. | personalised FM forg. | "
                  "global FM acc. | small acc. | small forg. |",
                  "|---|---|---|---|---|---|---|"]
        for key, g in groups.items():
            if key[0] != b or key[3] != labels:
                continue
            lines.append(
                f"| {key[1]} | {key[2]} | {_cell(g['fm']['accuracy'])} | "
                f"{_cell(g['fm']['forgetting'])} | {_cell(g['fm_global']['accuracy'])} | "
                f"{_cell(g['small']['accuracy'])} | {_cell(g['small']['forgetting'])} |")
        lines += ["", f"![{b}](results/{b}-accuracy.png)", ""]
        lines += goal_check(groups, b, labels) + sweep_table(groups, b)
    doc.write_text("\n".join(lines) + "\n" + ANALYSIS + kept, encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmark", nargs="+", default=["digits"],
                        choices=sorted(SMALL_MODELS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--output", type=Path, default=Path("runs/compare"))
    parser.add_argument("--doc", type=Path, default=Path("docs/results.md"),
                        help="where the table goes; an analysis section is kept if present")
    parser.add_argument("--public-labels", type=int, default=5, metavar="N",
                        help="labelled public examples per class the server holds (default 5)")
    parser.add_argument("--sweep", nargs="*", type=int, default=[], metavar="N",
                        help="other label budgets at which to run one-by-one × replay and "
                        "fm-only (a number above the public set's size per class labels all)")
    parser.add_argument("--reuse-only", action="store_true",
                        help="run nothing: write the doc from the finished runs in --output")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="configuration overrides for every run, e.g. rounds=2")
    args = parser.parse_args(argv)
    overrides = fclkit.config.parse_option_pairs(args.set, "--set")
    rows = run_all(args.benchmark, args.seeds, args.output, overrides, args.public_labels,
                   args.sweep, args.reuse_only)
    (args.output / "comparison.json").write_text(json.dumps(rows, indent=1))
    given = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--reuse-only"]
    command = "python examples/compare.py " + " ".join(given)  # what makes the runs
    # the runs' own wall times (runs reused from --output count with the time they took)
    write_doc(summarise(rows), args.benchmark, args.seeds, args.doc, command.strip(),
              sum(r["seconds"] for r in rows), args.public_labels)
    print(f"wrote {args.doc}")


if __name__ == "__main__":
    main()
