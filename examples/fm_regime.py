"""Where does the foundation model matter? A grid over the private data's size and the FM's
resolution on Fashion-MNIST, with the method, the strongest baselines and the ceilings.

    python examples/fm_regime.py [--per-class 20 200] [--image-size 64 224] [--seeds 0]
        [--jobs 2] [--output runs/fm-regime] [--doc docs/fm-regime.md] [--reuse-only]
        [--set threads=1 loggers=none cache_dir=DIR]

Every cell is ``split-fmnist`` with ``train_per_class`` training images of each class
(before the public set is carved out of them: ``public_fraction = 0.2``, 2 server labels
per class), 5 tasks x 3 rounds, 3 clients, tested on 3 % of every class of all 70,000
images (2,100 images; ``test_fraction = 0.03``), with the default FM (EfficientNet-Lite0,
frozen backbone, linear head) at ``image_size`` pixels. Rows (the same runs as
``examples/compare.py``'s rows of those names, docs/results.md):

* the method, ``one-by-one`` x replay, and with per-class feature statistics (our
  addition, ``calibration = gaussian``);
* the strongest baselines: FedAvg x replay (small models), ``fm-fedavg`` (the clients
  train the FM part on their own data, which breaks the method's premise), and the
  FM-side baselines that keep it: ``fm-only`` (the FM trained on the server's labels
  alone) and FedDF x replay (ensemble distillation into the small models and the FM);
* the ceilings: the FM part and the small CNN trained on every client's data at once;
* heterogeneous fleets (an MLP, a CNN and LeNet-5, one per client): the method, the
  calibrated method, isolated x replay and FedDF x replay.

The table answers: at which data size and resolution is the FM part stronger than the
small models (the ceilings), and does the method then bring that strength to the
clients? A shared ``cache_dir`` computes each image size's backbone features once.
Finished runs in ``--output`` are reused (their configuration checked, as compare.py
does).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import compare  # noqa: E402  (examples/compare.py: the rows, runs and reuse checks)

import fclkit  # noqa: E402

BENCHMARK = "split-fmnist"
LABELS = 2
OPTIONS = {"test_fraction": 0.03}
ROWS = (compare.METHOD, compare.CALIBRATED, compare.FEDAVG_REPLAY, compare.FM_FEDAVG,
        compare.FM_ONLY, compare.FEDDF, compare.FM_CEILING, "small model cnn, joint")
#: rows also run with heterogeneous small models (mlp, cnn, lenet: one per client)
HETERO_ROWS = (compare.METHOD, compare.CALIBRATED, compare.ISOLATED, compare.FEDDF)


def uses_fm(spec: dict) -> bool:
    """Whether the row's runs use the FM (a run that does not is the same at every image
    size): its fusion requires one, or the row configures one (FedDF distils into it)."""
    fusion = compare._registry().get("fusion", spec["fusion"]).cls
    return bool(fusion.requires_foundation_model or spec["set"].get("fm"))


def plan(per_class: int, image_size: int, tasks: int, rounds: int) -> list[dict]:
    """The cell's runs: compare.py's rows of the names in ROWS (homogeneous CNNs) and in
    HETERO_ROWS (heterogeneous small models)."""
    specs = [s for s in compare.plan(BENCHMARK, LABELS, "all", fm="efficientnet-lite",
                                     tasks=tasks, rounds=rounds)
             if (s["label"] in ROWS and s["models"] == "homogeneous")
             or (s["label"] in HETERO_ROWS and s["models"] == "heterogeneous")]
    cell = []
    for s in specs:
        fm = uses_fm(s)
        where = f"{per_class}/class, {image_size} px" if fm else f"{per_class}/class"
        s = {**s, "label": f"{s['label']} [{where}]", "row": s["label"],
             "per_class": per_class, "image_size": image_size if fm else None}
        s["set"] = {**s["set"], "public_fraction": 0.2,
                    "benchmark_options": {**s["set"].get("benchmark_options", {}), **OPTIONS,
                                          "train_per_class": per_class}}
        if fm:
            s["set"]["fm_options"] = {**s["set"].get("fm_options", {}),
                                      "image_size": image_size}
        cell.append(s)
    return cell


def grid(per_classes: list[int], sizes: list[int], tasks: int, rounds: int) -> list[dict]:
    """Every run of the grid once: a run without the FM is shared by the image sizes of
    its data size."""
    planned: dict[tuple[str, str], dict] = {}
    for per_class in per_classes:
        for size in sizes:
            planned.update(((s["label"], s["models"]), s)
                           for s in plan(per_class, size, tasks, rounds))
    return list(planned.values())


def run(args: argparse.Namespace) -> list[dict]:
    """Run (or reuse, as compare.py does) every run of the grid; their rows."""
    overrides = fclkit.config.parse_option_pairs(args.set, "--set")
    tasks = int(overrides.get("tasks", fclkit.config.FIELDS["tasks"].default))
    rounds = int(overrides.get("rounds", fclkit.config.FIELDS["rounds"].default))
    todo: list = []
    rows: list = []
    for seed in args.seeds:  # seed by seed: an interrupted grid has whole seeds first
        for spec in grid(args.per_class, args.image_size, tasks, rounds):
            compare.schedule(BENCHMARK, spec, seed, args.output, overrides, todo, rows,
                             args.reuse_only)
    return compare.execute(todo, rows, args.jobs)


def _cells(rows: list[dict], sizes: list[int]) -> list[dict]:
    """The rows as compare.py's, one "benchmark" per cell ("20/class, 224 px"); a run
    without the FM in every image size's cell."""
    out = []
    for r in rows:
        for size in [r["image_size"]] if r["image_size"] is not None else sizes:
            out.append({**r, "benchmark": f"{r['per_class']}/class, {size} px",
                        "label": r["row"], "cell": (r["per_class"], size)})
    return out


#: the overview's columns: (row, model, heading)
COLUMNS = ((compare.FM_CEILING, "fm", "FM part, joint (ceiling)"),
           ("small model cnn, joint", "small", "small CNN, joint (ceiling)"),
           (compare.METHOD, "fm", "one-by-one × replay: FM"),
           (compare.METHOD, "small", "its small models"),
           (compare.CALIBRATED, "fm", "+ feature statistics: FM"),
           (compare.CALIBRATED, "small", "its small models"),
           (compare.FEDAVG_REPLAY, "small", "FedAvg × replay"),
           (compare.FM_FEDAVG, "fm", "fm-fedavg: FM"),
           (compare.FM_ONLY, "fm", "fm-only: FM"),
           (compare.FEDDF, "fm", "FedDF × replay: FM"),
           (compare.FEDDF, "small", "its small models"))
HETERO_COLUMNS = ((compare.METHOD, "fm", "one-by-one × replay: FM"),
                  (compare.METHOD, "small", "its small models"),
                  (compare.CALIBRATED, "fm", "+ feature statistics: FM"),
                  (compare.CALIBRATED, "small", "its small models"),
                  (compare.ISOLATED, "small", "isolated × replay"),
                  (compare.FEDDF, "fm", "FedDF × replay: FM"),
                  (compare.FEDDF, "small", "its small models"))


def write_doc(rows: list[dict], args: argparse.Namespace, command: str) -> None:
    """The overview table (one line per cell), then each cell's goal check as
    docs/results.md has it (compare.goal_check) for the method and the calibrated one."""
    cells = _cells(rows, args.image_size)
    groups = compare.summarise(cells)
    order = sorted({r["cell"] for r in cells})
    seeds = sorted({r["seed"] for r in rows})
    hours = sum(r["seconds"] for r in rows) / 3600
    lines = [
        "# Where the foundation model matters: data size and resolution (Fashion-MNIST)",
        "", "Generated by:", "", "```", command, "```", "",
        f"Seeds {', '.join(map(str, seeds))}; {len(rows)} runs, {hours:.1f} h of run time "
        "in all. Final average accuracy in %, mean ± std over seeds (each seed: mean over "
        "clients). Each cell: `split-fmnist` with the given training images per class "
        "(the public set, 20 % of them, carved out first; 2 server labels per class), "
        "5 tasks × 3 rounds, 3 clients, tested on 2,100 images; the FM is "
        "EfficientNet-Lite0 (frozen backbone, linear head) at the given image size. The "
        "script's docstring (`examples/fm_regime.py`) describes every row; they are the "
        "runs of [results.md](results.md)'s rows of the same names, and the goal checks "
        "are computed as there.", ""]
    for models, columns, title in (
            ("homogeneous", COLUMNS, "Homogeneous fleets (every client a CNN)"),
            ("heterogeneous", HETERO_COLUMNS, "Heterogeneous fleets (an MLP, a CNN and "
             "LeNet-5, one per client)")):
        lines += [f"## {title}", "", "| images per class | FM image size | "
                  + " | ".join(heading for _, _, heading in columns) + " |",
                  "|" + "---|" * (len(columns) + 2)]
        for per_class, size in order:
            name = f"{per_class}/class, {size} px"

            def cell(row: str, model: str, name: str = name, models: str = models) -> str:
                g = groups.get((name, row, models))
                return compare._cell(g[model]["accuracy"]) if g else "–"
            lines.append(f"| {per_class} | {size} px | "
                         + " | ".join(cell(row, model) for row, model, _ in columns) + " |")
        lines.append("")
    lines += ["## Goal checks", ""]
    for per_class, size in order:
        name = f"{per_class}/class, {size} px"
        lines += compare.goal_check(groups, name) + compare.goal_check(
            groups, name, compare.CALIBRATED)
    previous = args.doc.read_text(encoding="utf-8") if args.doc.exists() else ""
    marker = "<!-- analysis: kept when the table is regenerated -->"
    kept = previous[previous.index(marker):] if marker in previous else marker + "\n"
    args.doc.write_text("\n".join(lines) + "\n" + kept, encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", nargs="+", type=int, default=[20, 200])
    parser.add_argument("--image-size", nargs="+", type=int, default=[64, 224])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--output", type=Path, default=Path("runs/fm-regime"))
    parser.add_argument("--doc", type=Path, default=Path("docs/fm-regime.md"))
    parser.add_argument("--reuse-only", action="store_true",
                        help="run nothing: write the doc from the finished runs in --output")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="configuration overrides for every run, e.g. rounds=2")
    args = parser.parse_args(argv)
    rows = run(args)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "fm-regime.json").write_text(json.dumps(rows, indent=1))
    given = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--reuse-only"]
    write_doc(rows, args, "python examples/fm_regime.py " + " ".join(given))
    print(f"wrote {args.doc}")


if __name__ == "__main__":
    main()
