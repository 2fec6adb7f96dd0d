"""Safe serialisation of nested states: tensors in safetensors, the rest in JSON.

A *state* is a nested dict/list whose leaves are tensors or JSON-able values
(int, float, str, bool, None). Nothing is pickled, so loading a state from an
untrusted file or client never executes code.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import FclkitError

_TENSOR = "__tensor__"


def flatten_state(state: Any) -> tuple[Any, dict[str, Any]]:
    """Split ``state`` into a JSON skeleton and a flat ``{key: tensor}`` dict."""
    import torch

    tensors: dict[str, torch.Tensor] = {}
    by_identity: dict[int, str] = {}  # the same tensor object twice is stored once
    storages: set[int] = set()

    def walk(node: Any, path: str) -> Any:
        if isinstance(node, torch.Tensor):
            if id(node) in by_identity:
                return {_TENSOR: by_identity[id(node)]}
            key = path or "root"
            value = node.detach().cpu().contiguous()
            storage = value.untyped_storage().data_ptr()
            if storage in storages:  # a view of a tensor already stored: own copy
                value = value.clone()
            storages.add(value.untyped_storage().data_ptr())
            tensors[key] = value
            by_identity[id(node)] = key
            return {_TENSOR: key}
        if isinstance(node, dict):
            out = {}
            for k, v in node.items():
                if not isinstance(k, str):
                    raise TypeError(f"state keys must be strings, got {k!r} at {path or 'root'}")
                out[k] = walk(v, f"{path}/{k}" if path else k)
            return out
        if isinstance(node, (list, tuple)):
            return [walk(v, f"{path}/{i}") for i, v in enumerate(node)]
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        raise TypeError(
            f"state value at {path or 'root'} is a {type(node).__name__}: only tensors and "
            "JSON values (numbers, strings, lists, dicts) can be saved"
        )

    return walk(state, ""), tensors


def unflatten_state(skeleton: Any, tensors: dict[str, Any]) -> Any:
    """Inverse of :func:`flatten_state`."""
    if isinstance(skeleton, dict):
        if set(skeleton) == {_TENSOR}:
            return tensors[skeleton[_TENSOR]]
        return {k: unflatten_state(v, tensors) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [unflatten_state(v, tensors) for v in skeleton]
    return skeleton


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a file so that an interrupted write never leaves it half-written."""
    _atomic_write_bytes(Path(path), text.encode("utf-8"))


#: the safetensors metadata key of the digest that binds a state's two files
DIGEST_KEY = "fclkit.sha256"


def tensors_digest(tensors: Mapping[str, Any]) -> str:
    """BLAKE2b (128 bits) of named tensors: every name, dtype, shape and the bytes; the
    same for equal tensors wherever they live (a quick identity of a model's weights)."""
    import hashlib

    import torch

    h = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(tensors.items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def _digest(skeleton_text: bytes, tensors: dict[str, Any]) -> str:
    """SHA-256 of the JSON skeleton's bytes and of every tensor's name, dtype, shape and
    bytes: any change to either file (a flipped byte, a truncation, files of two saves)
    gives another digest."""
    import hashlib

    import torch

    h = hashlib.sha256()
    h.update(len(skeleton_text).to_bytes(8, "little"))
    h.update(skeleton_text)
    for key in sorted(tensors):
        value = tensors[key]
        head = json.dumps([key, str(value.dtype), list(value.shape)]).encode()
        h.update(len(head).to_bytes(8, "little"))
        h.update(head)
        raw = value.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        h.update(raw.numpy().tobytes())
    return h.hexdigest()


def _stored_digest(blob: bytes) -> str | None:
    """The digest in a safetensors file's metadata (a file that safetensors has read);
    None for a file with no metadata at all (written before digests were)."""
    size = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + size])
    if "__metadata__" not in header:
        return None
    digest = (header["__metadata__"] or {}).get(DIGEST_KEY)
    if not isinstance(digest, str):
        raise ValueError(f"its metadata has no {DIGEST_KEY}")
    return digest


def save_state(state: Any, path: str | Path) -> None:
    """Write ``state`` to ``path`` (``.safetensors``) and its JSON skeleton beside it.

    The tensors file's metadata holds a digest of both files, so :func:`load_state`
    refuses any change to either of them."""
    from safetensors.torch import save

    path = Path(path)
    skeleton, tensors = flatten_state(state)
    text = json.dumps(skeleton)
    digest = _digest(text.encode("utf-8"), tensors)
    _atomic_write_bytes(path, save(tensors, metadata={DIGEST_KEY: digest}))
    atomic_write_text(path.with_suffix(".json"), text)


def load_state(path: str | Path) -> Any:
    """Read a state written by :func:`save_state`; a damaged file is a clear error (an
    FclkitError naming the file), never a traceback nor a silently different state."""
    from safetensors.torch import load

    path = Path(path)
    meta = path.with_suffix(".json")
    damaged = "it may be truncated or tampered with; restore it or start a fresh run"
    try:
        blob = path.read_bytes()
        tensors = load(blob)
        digest = _stored_digest(blob)
    except FileNotFoundError:
        raise FclkitError(f"state file {path} does not exist") from None
    except Exception as exc:
        raise FclkitError(
            f"state file {path} is damaged or not a safetensors file ({exc})", hint=damaged,
        ) from None
    try:
        text = meta.read_bytes()
    except FileNotFoundError:
        raise FclkitError(f"state file {meta} does not exist") from None
    except OSError as exc:
        raise FclkitError(f"state file {meta} cannot be read ({exc.strerror})") from None
    # a file without metadata was written before digests were (it is read as it is)
    if digest is not None and _digest(text, tensors) != digest:
        raise FclkitError(f"state files {path} and {meta} do not match: one of them is "
                          "damaged, or they come from different saves", hint=damaged)
    try:
        skeleton = json.loads(text.decode("utf-8"))
        return unflatten_state(skeleton, tensors)
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise FclkitError(f"state file {meta} is damaged ({exc})", hint=damaged) from None
