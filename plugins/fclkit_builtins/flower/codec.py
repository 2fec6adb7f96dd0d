"""fclkit states <-> Flower records, with nothing pickled.

A *state* (a nested dict/list of tensors and JSON values: an ``Upload``, a
``Download``, ``Client.state_dict()``) is split by
:func:`fclkit.serialization.flatten_state` into a JSON skeleton and a flat
``{path: tensor}`` dict. The tensors travel in a Flower ``ArrayRecord`` (one
``Array`` per tensor, NumPy ``.npy`` bytes loaded with ``allow_pickle=False``;
dtypes NumPy lacks, such as ``bfloat16``, travel as raw little-endian bytes
tagged with the torch dtype), the skeleton as a JSON string in a
``ConfigRecord``. Decoding a record never executes code.

Imports flwr and torch: only the Flower engine's processes import this module.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from fclkit.errors import FclkitError
from fclkit.serialization import flatten_state, unflatten_state

#: Array.stype of a tensor sent as raw bytes (Array.dtype is then "torch.<name>")
RAW_STYPE = "fclkit.torch-raw"
#: torch dtypes NumPy cannot hold -> (same-width integer view, its little-endian NumPy dtype)
_RAW_VIEW = {torch.bfloat16: (torch.int16, np.dtype("<i2"))}
_BY_NAME = {str(dt): dt for dt in _RAW_VIEW}


def tensor_to_array(tensor: torch.Tensor) -> Array:
    """One tensor as a Flower ``Array`` (exact: same dtype, shape and bits)."""
    t = tensor.detach().cpu().contiguous()
    if t.dtype not in _RAW_VIEW:
        return Array.from_numpy_ndarray(t.numpy())
    view, np_dtype = _RAW_VIEW[t.dtype]
    data = t.view(view).numpy().astype(np_dtype, copy=False).tobytes()
    return Array(dtype=str(t.dtype), shape=tuple(t.shape), stype=RAW_STYPE, data=data)


def array_to_tensor(array: Array) -> torch.Tensor:
    """Inverse of :func:`tensor_to_array` (NumPy arrays are loaded without pickle)."""
    if array.stype != RAW_STYPE:
        return torch.from_numpy(np.array(array.numpy(), copy=True))
    dtype = _BY_NAME.get(array.dtype)
    if dtype is None:
        raise FclkitError(f"unsupported raw tensor dtype {array.dtype!r} in a Flower message")
    view, np_dtype = _RAW_VIEW[dtype]
    flat = np.frombuffer(array.data, dtype=np_dtype)
    if flat.size != math.prod(array.shape):
        raise FclkitError("a tensor in a Flower message has the wrong number of bytes")
    native = flat.astype(np_dtype.newbyteorder("="), copy=True)
    return torch.from_numpy(native).view(view).view(dtype).reshape(tuple(array.shape))


def encode(state: Any) -> tuple[str, ArrayRecord]:
    """``state`` -> (JSON skeleton, ArrayRecord of its tensors)."""
    skeleton, tensors = flatten_state(state)
    record = ArrayRecord()
    for key, tensor in tensors.items():
        record[key] = tensor_to_array(tensor)
    return json.dumps(skeleton), record


def decode(skeleton: str, record: ArrayRecord | None) -> Any:
    """Inverse of :func:`encode`; a malformed message is a :class:`FclkitError`."""
    try:
        tensors = {key: array_to_tensor(arr) for key, arr in (record or {}).items()}
        return unflatten_state(json.loads(skeleton), tensors)
    except FclkitError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise FclkitError(f"malformed fclkit state in a Flower message ({exc!r})") from None
