"""The final summary printed after a run (rich tables)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

MODEL_LABELS = {"small": "small models", "fm": "personalised FM", "fm_global": "global FM"}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n:.1f} TiB"


def print_summary(metrics: dict[str, Any], run_dir: Path | None, console: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title="Final metrics (mean over clients, %)", title_justify="left")
    for col in ("model", "avg accuracy", "avg incremental acc.", "avg forgetting", "BWT", "FWT"):
        table.add_column(col, justify="right" if col != "model" else "left")
    for model in metrics["models"]:
        m = metrics["mean"][model]
        table.add_row(MODEL_LABELS.get(model, model), _pct(m["average_accuracy"]),
                      _pct(m["average_incremental_accuracy"]), _pct(m["average_forgetting"]),
                      _pct(m["backward_transfer"]), _pct(m["forward_transfer"]))
    console.print(table)

    main = metrics["models"][-1] if "fm" not in metrics["models"] else "fm"
    matrix = metrics["mean"][main]["accuracy_matrix"]
    grid = Table(title=f"Accuracy matrix R[i, j] of the {MODEL_LABELS.get(main, main)} "
                 "(row: after task i, column: task j, %)", title_justify="left")
    grid.add_column("after")
    for j in range(len(matrix)):
        grid.add_column(f"task {j + 1}", justify="right")
    for i, row in enumerate(matrix):
        grid.add_row(f"task {i + 1}", *[_pct(v) if j <= i else f"[dim]{_pct(v)}[/dim]"
                                        for j, v in enumerate(row)])
    console.print(grid)

    comm = metrics["communication"]
    t = metrics["timings_seconds"]
    console.print(
        f"communication: {_bytes(comm['bytes_up_total'])} up, "
        f"{_bytes(comm['bytes_down_total'])} down   time: "
        + ", ".join(f"{k} {v:.1f}s" for k, v in t.items()))
    if metrics.get("failures"):
        console.print(f"[yellow]{len(metrics['failures'])} client failures recorded[/yellow]")
    if run_dir is not None:
        console.print(f"results: [bold]{run_dir}[/bold]")
