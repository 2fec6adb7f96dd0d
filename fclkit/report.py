"""``fclkit report RUN_DIR [RUN_DIR ...]``: pictures and a Markdown summary of runs.

For every run and evaluated model: a heatmap of the accuracy matrix (mean over
clients). For all runs together, on shared axes: average accuracy over the
tasks seen so far after each task, average forgetting after each task, and the
bytes sent per round. A ``report.md`` puts a comparison table and the pictures
side by side. Uses matplotlib (Agg backend, no display needed).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import FclkitError
from .results import load_metrics
from .serialization import atomic_write_text
from .summary import MODEL_LABELS

MODEL_COLORS = {"small": "tab:blue", "fm": "tab:red", "fm_global": "tab:green"}


def _label(run_dir: Path, names: dict[Path, str]) -> str:
    return names[run_dir]


def _unique_names(run_dirs: list[Path]) -> dict[Path, str]:
    names: dict[Path, str] = {}
    for d in run_dirs:
        base = d.name
        name, n = base, 2
        while name in names.values():
            name, n = f"{base}-{n}", n + 1
        names[d] = name
    return names


def _pct(v: float | None) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def _run_info(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def make_report(run_dirs: Sequence[str | Path], output: str | Path | None = None) -> Path:
    """Write the pictures and ``report.md`` for ``run_dirs``; return the report folder."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    given = [Path(d) for d in run_dirs]
    if not given:
        raise FclkitError("no results folder given", hint="fclkit report RUN_DIR [RUN_DIR ...]")
    dirs, skipped = _expand(given)
    runs = {}
    for d in dirs:
        metrics = load_metrics(d)
        if not metrics.get("complete", True) or "mean" not in metrics:
            raise FclkitError(f"{d} holds an unfinished run (status: "
                              f"{_run_info(d).get('status', 'unknown')})",
                              hint="finish it with `fclkit run --resume` first")
        runs[d] = metrics
    names = _unique_names(dirs)
    if output is None:
        output = dirs[0] / "report" if given == dirs and len(dirs) == 1 else Path(
            f"report-{time.strftime('%Y%m%d-%H%M%S')}")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    pictures: dict[str, list[str]] = {"heatmaps": [], "curves": []}

    # heatmaps: one per run and model
    for d, m in runs.items():
        for model in m["models"]:
            R = m["mean"][model]["accuracy_matrix"]
            T = len(R)
            fig, ax = plt.subplots(figsize=(1.1 * T + 2.2, 0.9 * T + 1.6))
            im = ax.imshow([[100 * v for v in row] for row in R], vmin=0, vmax=100,
                           cmap="viridis")
            for i in range(T):
                for j in range(T):
                    v = 100 * R[i][j]
                    ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=9,
                            color="white" if v < 60 else "black",
                            alpha=1.0 if j <= i else 0.5)
            ax.set_xticks(range(T), [f"{j + 1}" for j in range(T)])
            ax.set_yticks(range(T), [f"{i + 1}" for i in range(T)])
            ax.set_xlabel("evaluated on task j")
            ax.set_ylabel("after training task i")
            ax.set_title(f"{names[d]}\n{MODEL_LABELS.get(model, model)}: accuracy (%)",
                         fontsize=10)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
            fig.tight_layout()
            fname = f"heatmap-{names[d]}-{model}.png"
            fig.savefig(out / fname, dpi=110)
            plt.close(fig)
            pictures["heatmaps"].append(fname)

    # curves on shared axes
    fig, (ax_acc, ax_fgt) = plt.subplots(1, 2, figsize=(11, 4.2))
    for d, m in runs.items():
        for model in m["models"]:
            s = m["mean"][model]
            xs = list(range(1, len(s["accuracy_curve"]) + 1))
            style = {"color": MODEL_COLORS.get(model), "marker": "o"} if len(runs) == 1 else {
                "marker": "o", "linestyle": {"small": "-", "fm": "--"}.get(model, ":")}
            label = MODEL_LABELS.get(model, model) if len(runs) == 1 else (
                f"{names[d]} · {MODEL_LABELS.get(model, model)}")
            ax_acc.plot(xs, [100 * v for v in s["accuracy_curve"]], label=label, **style)
            fg = s.get("forgetting_curve") or []
            ax_fgt.plot([x for x, v in zip(xs, fg, strict=False) if v is not None],
                        [100 * v for v in fg if v is not None], label=label, **style)
    ax_acc.set(title="average accuracy on the tasks seen so far", xlabel="after task",
               ylabel="accuracy (%)", ylim=(0, 100))
    ax_fgt.set(title="average forgetting", xlabel="after task", ylabel="forgetting (points)")
    for ax in (ax_acc, ax_fgt):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax_acc.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)
    pictures["curves"].append("curves.png")

    # communication per round
    fig, ax = plt.subplots(figsize=(8, 3.6))
    for d, m in runs.items():
        per_round: dict[tuple[int, int], list[int]] = {}
        for row in m["communication"]["per_client_round"]:
            key = (row["task"], row["round"])
            up, down = per_round.setdefault(key, [0, 0])
            per_round[key] = [up + row["bytes_up"], down + row["bytes_down"]]
        keys = sorted(per_round)
        xs = list(range(1, len(keys) + 1))
        ax.plot(xs, [per_round[k][0] / 2**20 for k in keys], marker=".",
                label=f"{names[d]} · up")
        ax.plot(xs, [per_round[k][1] / 2**20 for k in keys], marker=".", linestyle="--",
                label=f"{names[d]} · down")
    ax.set(title="communication per round (all clients)", xlabel="round (all tasks)",
           ylabel="MiB")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "communication.png", dpi=110)
    plt.close(fig)
    pictures["curves"].append("communication.png")

    atomic_write_text(out / "report.md", _markdown(runs, names, pictures, skipped))
    return out


def _expand(given: list[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The run folders to report: each given run folder, and every finished run inside a
    given folder of runs (the folder passed to ``fclkit run --output``); the unfinished
    runs found inside one, with their status, are listed as not reported."""
    from .results import is_run_dir, run_status, runs_in

    dirs: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for d in given:
        inside = [] if is_run_dir(d) else runs_in(d)
        if not inside:
            dirs.append(d)  # a run folder, or an error load_metrics names
            continue
        finished = []
        for run in inside:
            metrics_done = False
            try:
                metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
                metrics_done = (isinstance(metrics, dict) and metrics.get("complete", True)
                                and "mean" in metrics)
            except (OSError, ValueError):
                pass
            if metrics_done:
                finished.append(run)
            else:
                skipped.append((run, run_status(run)))
        if not finished:
            listed = ", ".join(f"{r.name} ({run_status(r)})" for r in inside[-10:])
            raise FclkitError(f"{d} holds {len(inside)} run(s) and none has finished: "
                              f"{listed}", hint="finish one with `fclkit run --resume RUN_DIR`")
        dirs += finished
    return list(dict.fromkeys(dirs)), skipped


def _markdown(runs: dict[Path, dict], names: dict[Path, str],
              pictures: dict[str, list[str]],
              skipped: list[tuple[Path, str]] | None = None) -> str:
    lines = ["# fclkit report", "", "Accuracies and forgetting in %, mean over clients.", "",
             "| run | cl | fusion | clients | tasks | model | avg accuracy | avg incr. acc. "
             "| forgetting | BWT | FWT | MiB up | time (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for d, m in runs.items():
        cfg = _read_config(d)
        for model in m["models"]:
            s = m["mean"][model]
            lines.append(
                f"| {names[d]} | {cfg.get('cl', '?')} | {cfg.get('fusion', '?')} | "
                f"{m['clients']} | {m['tasks']} | {MODEL_LABELS.get(model, model)} | "
                f"{_pct(s['average_accuracy'])} | {_pct(s['average_incremental_accuracy'])} | "
                f"{_pct(s['average_forgetting'])} | {_pct(s['backward_transfer'])} | "
                f"{_pct(s['forward_transfer'])} | "
                f"{m['communication']['bytes_up_total'] / 2**20:.1f} | "
                f"{m['timings_seconds'].get('total', float('nan')):.1f} |")
    lines += ["", "## Learning curves", ""]
    lines += [f"![{p}]({p})" for p in pictures["curves"]]
    lines += ["", "## Accuracy matrices", "",
              "Row i: after training task i; column j: accuracy on task j "
              "(faded: tasks not trained yet).", ""]
    lines += [f"![{p}]({p})" for p in pictures["heatmaps"]]
    lines += ["", "Runs: " + ", ".join(f"`{d}`" for d in runs), ""]
    if skipped:
        lines += ["Not reported (unfinished): "
                  + ", ".join(f"`{d}` ({status})" for d, status in skipped), ""]
    return "\n".join(lines)


def _read_config(run_dir: Path) -> dict[str, Any]:
    import tomllib

    try:
        return tomllib.loads((run_dir / "config.toml").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
