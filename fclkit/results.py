"""The results folder of a run.

``RUN_DIR/``
  ``config.toml``   the resolved configuration (rerun with ``fclkit run --config``)
  ``run.json``      status, seed, versions of fclkit and of every plugin used, times
  ``metrics.json``  every metric (schema in ``docs/results-format.md``)
  ``rounds.csv``    one row per task, round and client

Every file is written atomically (temporary file + rename), so an interrupted
write never leaves a corrupt file. A run that stops early still writes what it
had (``metrics.json`` with ``"complete": false``) and the error in ``run.json``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

from .config import ExperimentConfig, dump_toml
from .serialization import atomic_write_text

ROUND_COLUMNS = ["task", "round", "client", "status", "architecture", "num_examples",
                 "train_loss", "train_seconds", "bytes_up", "bytes_down",
                 "bytes_down_received", "fusion_seconds"]


#: files that make a folder a run's results folder (any one of them)
RUN_FILES = ("run.json", "config.toml", "metrics.json")


def check_output(output: str | Path) -> None:
    """Refuse, before anything is loaded, an ``output`` that cannot hold run folders:
    an existing file, or a path through one."""
    from .errors import ConfigError

    path = Path(output)
    for part in (path, *path.parents):
        if part.exists() and not part.is_dir():
            where = "is a file" if part == path else f"goes through the file {part}"
            raise ConfigError("output", str(output), f"{where}, not a folder",
                              hint="--output (output in TOML) names the folder that holds "
                              "the runs' results folders: pass a folder, or a path that "
                              "does not exist yet")


def create_run_dir(config: ExperimentConfig, *, timestamp: str | None = None) -> Path:
    """Create the run's results folder under ``config.output``.

    The folder is created atomically (``mkdir`` fails if it exists), so runs started at
    the same moment with the same ``output`` (in threads or processes) each get their
    own folder, the later ones with a suffix (``-2``, ``-3``, ...).
    """
    from .errors import FclkitError

    check_output(config.output)
    base = Path(config.output)
    name = config.name or (
        f"{timestamp or time.strftime('%Y%m%d-%H%M%S')}-{config.cl}-{config.fusion}"
        f"-s{config.seed}")
    try:
        suffix = 1
        while True:
            run_dir = base / (name if suffix == 1 else f"{name}-{suffix}")
            run_dir.parent.mkdir(parents=True, exist_ok=True)
            try:
                run_dir.mkdir()
            except FileExistsError:
                suffix += 1
                continue
            return run_dir
    except OSError as exc:
        raise FclkitError(f"cannot create the results folder in {base}: "
                          f"{exc.strerror or exc}",
                          hint="check --output (output in TOML) and its permissions"
                          ) from None


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` is one run's results folder."""
    path = Path(path)
    return path.is_dir() and any((path / f).is_file() for f in RUN_FILES)


def runs_in(folder: str | Path) -> list[Path]:
    """The run folders directly inside ``folder`` (an ``--output`` folder), by name."""
    folder = Path(folder)
    if not folder.is_dir() or is_run_dir(folder):
        return []
    try:
        return sorted((p for p in folder.iterdir() if is_run_dir(p)), key=lambda p: p.name)
    except OSError:
        return []


def run_status(run_dir: str | Path) -> str:
    """``status`` from the run's ``run.json`` (``unknown`` when it cannot be read)."""
    try:
        data = json.loads((Path(run_dir) / "run.json").read_text(encoding="utf-8"))
        return str(data.get("status", "unknown")) if isinstance(data, dict) else "unknown"
    except (OSError, ValueError):
        return "unknown"


def check_resume_dir(path: str | Path) -> Path:
    """``path`` if it is one run's results folder; else an error that says what it is
    (the folder passed to ``--output``: its runs are named, to pick one)."""
    from .errors import FclkitError

    path = Path(path)
    if is_run_dir(path):
        return path
    runs = runs_in(path)
    if runs:
        unfinished = [r for r in runs if run_status(r) != "finished"]
        listed = ", ".join(f"{r.name} ({run_status(r)})" for r in runs[-10:])
        more = f"{len(runs) - 10} more, " if len(runs) > 10 else ""
        pick = (unfinished or runs)[-1]
        raise FclkitError(
            f"{path} is a folder of {len(runs)} run(s), not one run: {more}{listed}; "
            "--resume continues one of them",
            hint=f"pass that run's folder, e.g. fclkit run --resume {pick}")
    if not path.exists():
        raise FclkitError(f"{path} does not exist: --resume takes a run's results folder")
    raise FclkitError(f"{path} is not a fclkit results folder (it has no "
                      f"{', '.join(RUN_FILES)})",
                      hint="--resume takes the folder a run wrote its results in")


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(_jsonable(data), indent=2, allow_nan=False) + "\n")


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("fclkit", "torch", "avalanche-lib", "transformers", "peft", "flwr"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _torch_threads() -> int | None:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return None
    return int(torch.get_num_threads())


def component_record(entry: Any, options: Any) -> dict[str, Any]:
    """One run.json ``components`` entry: kind, name, provenance and options."""
    import attrs

    values = attrs.asdict(options) if attrs.has(type(options)) else {}
    return {"kind": entry.kind, "name": entry.name, "plugin": entry.plugin,
            "distribution": entry.distribution, "version": entry.version,
            "options": json.loads(json.dumps(values, default=str))}


def write_start(run_dir: Path, config: ExperimentConfig, components: list[dict]) -> None:
    atomic_write_text(run_dir / "config.toml", dump_toml(config))
    write_json(run_dir / "run.json", {
        "status": "running",
        "seed": config.seed,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": sys.argv,
        # torch's float reductions depend on the thread count: same seed + same count
        # gives bit-identical accuracies
        "torch_threads": _torch_threads(),
        "versions": _versions(),
        "components": components,
    })


def _update_run_json(run_dir: Path, **changes: Any) -> None:
    path = run_dir / "run.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update(changes)
    data["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_json(path, data)


def mark_resumed(run_dir: Path) -> None:
    """Record in run.json that the run was resumed (and when)."""
    path = run_dir / "run.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    resumes = data.get("resumed", [])
    resumes.append(time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    data.update(status="running", resumed=resumes)
    data.pop("error", None)
    write_json(path, data)


def write_rounds_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=ROUND_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k) for k in ROUND_COLUMNS})
    atomic_write_text(path, buf.getvalue())


def write_end(run_dir: Path, metrics: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    metrics = {**metrics, "complete": True}
    write_json(run_dir / "metrics.json", metrics)
    write_rounds_csv(run_dir / "rounds.csv", rows)
    _update_run_json(run_dir, status="finished")


def write_failure(run_dir: Path, partial: dict[str, Any], rows: list[dict[str, Any]],
                  exc: BaseException) -> None:
    write_json(run_dir / "metrics.json", partial)
    write_rounds_csv(run_dir / "rounds.csv", rows)
    status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
    _update_run_json(run_dir, status=status, error=f"{type(exc).__name__}: {exc}")


def load_metrics(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "metrics.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        from .errors import FclkitError

        raise FclkitError(f"{path} does not exist: is {run_dir} a fclkit results folder?"
                          ) from None
