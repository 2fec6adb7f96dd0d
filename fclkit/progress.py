"""Progress reporting: silent for the Python API, ``rich`` bars for the CLI."""

from __future__ import annotations

import sys
from typing import Any


class Reporter:
    """Receives progress events from the experiment loop. The base class ignores them."""

    def run_started(self, tasks: int, rounds: int, clients: int) -> None: ...
    def phase(self, description: str) -> None: ...
    def round_started(self, task: int, round: int) -> None: ...
    def client_done(self, client_id: int) -> None: ...
    def round_done(self, task: int, round: int) -> None: ...
    def task_done(self, task: int, mean_accuracy: dict[str, float]) -> None: ...
    def warn(self, message: str) -> None:
        print(f"warning: {message}", file=sys.stderr)

    def close(self) -> None: ...


class RichReporter(Reporter):
    """Three bars -- tasks, rounds of the current task, clients of the current round."""

    def __init__(self, console: Any = None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = console or Console(stderr=True)
        self.progress = Progress(
            SpinnerColumn(), TextColumn("[bold]{task.description:<10}"), BarColumn(),
            MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.fields[info]}"),
            console=self.console, transient=False)
        self._bars: dict[str, Any] = {}

    def run_started(self, tasks: int, rounds: int, clients: int) -> None:
        self.progress.start()
        self._bars["tasks"] = self.progress.add_task("tasks", total=tasks, info="")
        self._bars["rounds"] = self.progress.add_task("rounds", total=rounds, info="")
        self._bars["clients"] = self.progress.add_task("clients", total=clients, info="")

    def phase(self, description: str) -> None:
        if "tasks" in self._bars:
            self.progress.update(self._bars["tasks"], info=description)
        else:
            self.console.print(f"[dim]{description}[/dim]")

    def round_started(self, task: int, round: int) -> None:
        self.progress.update(self._bars["rounds"], completed=round, info=f"task {task + 1}")
        self.progress.update(self._bars["clients"], completed=0, info=f"round {round + 1}")

    def client_done(self, client_id: int) -> None:
        self.progress.advance(self._bars["clients"])

    def round_done(self, task: int, round: int) -> None:
        self.progress.update(self._bars["rounds"], completed=round + 1)

    def task_done(self, task: int, mean_accuracy: dict[str, float]) -> None:
        info = "  ".join(f"{k} {100 * v:.1f}%" for k, v in mean_accuracy.items())
        self.progress.update(self._bars["tasks"], completed=task + 1, info=info)

    def warn(self, message: str) -> None:
        from rich.markup import escape

        self.console.print(f"[yellow]warning:[/yellow] {escape(message)}")

    def close(self) -> None:
        self.progress.stop()
