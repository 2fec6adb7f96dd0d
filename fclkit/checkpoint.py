"""Checkpoints: everything needed to continue a run, written at the end of every round.

``RUN_DIR/checkpoint/``
  ``round-NNNN.safetensors`` + ``round-NNNN.json``  the state (tensors + JSON skeleton)
  ``latest.json``                                   which file is current, and where in the run

The state holds the position (task, round), the server's state (fusion state,
global FM part), every client's state (small model, strategy state, FM part),
the downloads not yet delivered, the metrics so far and the random-number
generators. Nothing is pickled: a checkpoint (or anything offered as one) is
read with ``safetensors`` and JSON only, so loading it never executes code.
``latest.json`` is replaced atomically after the state files are complete, so a
run killed at any moment leaves the previous checkpoint usable.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from .errors import FclkitError
from .serialization import atomic_write_text, load_state, save_state

CHECKPOINT_DIR = "checkpoint"
LATEST = "latest.json"
FORMAT = "fclkit.checkpoint/1"


def rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    version, internal, gauss = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, dtype="int64")),
                      "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
            "python": {"version": version, "internal": list(internal), "gauss": gauss}}


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype("uint32"), n["pos"],
                         n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))


def save_checkpoint(run_dir: Path, state: dict[str, Any], *, task: int, round: int,
                    step: int) -> Path:
    """Write ``state`` as checkpoint number ``step``; then point ``latest.json`` at it."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    folder.mkdir(exist_ok=True)
    path = folder / f"round-{step:04d}.safetensors"
    save_state({"format": FORMAT, **state}, path)
    atomic_write_text(folder / LATEST, json.dumps(
        {"format": FORMAT, "file": path.name, "task": task, "round": round, "step": step}))
    for old in folder.glob("round-*"):
        if not old.name.startswith(path.stem):
            old.unlink(missing_ok=True)
    return path


def latest(run_dir: str | Path) -> dict[str, Any] | None:
    """The contents of ``latest.json``, or None when the run has no checkpoint."""
    pointer = Path(run_dir) / CHECKPOINT_DIR / LATEST
    if not pointer.exists():
        return None
    try:
        info = json.loads(pointer.read_text(encoding="utf-8"))
        if not isinstance(info, dict):
            raise ValueError(f"a JSON {type(info).__name__}, not a table")
        if info.get("format") != FORMAT:
            raise ValueError(f"format {info.get('format')!r}")
        file = info.get("file")
        if not isinstance(file, str) or Path(file).name != file or not file.endswith(
                ".safetensors"):
            raise ValueError(f"file {file!r}")
        return info
    except (OSError, ValueError, RecursionError) as exc:  # incl. UnicodeDecodeError
        raise FclkitError(f"checkpoint pointer {pointer} is damaged ({exc})",
                          hint="it may be truncated or tampered with") from None


def load_checkpoint(run_dir: str | Path) -> dict[str, Any]:
    """Read the latest checkpoint of ``run_dir``; a damaged file is a clear error."""
    info = latest(run_dir)
    if info is None:
        raise FclkitError(
            f"{run_dir} has no checkpoint to resume from",
            hint="checkpoints are written at the end of every round unless checkpoint = false")
    path = Path(run_dir) / CHECKPOINT_DIR / info["file"]
    state = load_state(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise FclkitError(f"checkpoint {path} is not a fclkit checkpoint")
    return state
