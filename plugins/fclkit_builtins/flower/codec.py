"""fclkit states <-> Flower records, with nothing pickled.

A *state* (a nested dict/list of tensors and JSON values: an ``Upload``, a
``Download``, ``Client.state_dict()``) is split by
:func:`fclkit.serialization.flatten_state` into a JSON skeleton and a flat
``{path: tensor}`` dict. The tensors travel in a Flower ``ArrayRecord``: one
``Array`` per tensor, its raw little-endian bytes tagged with the torch dtype
(``stype`` ``fclkit.torch-raw``; ``bfloat16``, which NumPy lacks, as 16-bit
integers). Writing ``.npy`` bytes (Flower's own ``Array.from_numpy_ndarray``) costs
3x as much per tensor, which shows in a simulation's many small messages; arrays in
that form (``numpy.ndarray``) are still read, with ``allow_pickle=False``. The
skeleton travels as a JSON string in a ``ConfigRecord``. Decoding a record never
executes code.

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
#: torch dtype -> (the dtype its bytes are read as, that one's little-endian NumPy dtype);
#: bfloat16, which NumPy lacks, as the same-width integer
_RAW = {dt: (dt, np.dtype(np_name).newbyteorder("<")) for dt, np_name in (
    (torch.float64, "f8"), (torch.float32, "f4"), (torch.float16, "f2"),
    (torch.int64, "i8"), (torch.int32, "i4"), (torch.int16, "i2"), (torch.int8, "i1"),
    (torch.uint8, "u1"), (torch.bool, "?"), (torch.complex64, "c8"),
    (torch.complex128, "c16"))}
_RAW[torch.bfloat16] = (torch.int16, np.dtype("<i2"))
_BY_NAME = {str(dt): dt for dt in _RAW}


def tensor_to_array(tensor: torch.Tensor) -> Array:
    """One tensor as a Flower ``Array`` (exact: same dtype, shape and bits)."""
    t = tensor.detach().cpu().contiguous()
    if t.dtype not in _RAW:  # a dtype without a raw form here: NumPy's .npy bytes
        return Array.from_numpy_ndarray(t.numpy())
    view, np_dtype = _RAW[t.dtype]
    data = (t if view is t.dtype else t.view(view)).numpy().astype(np_dtype,
                                                                   copy=False).tobytes()
    return Array(dtype=str(t.dtype), shape=tuple(t.shape), stype=RAW_STYPE, data=data)


def array_to_tensor(array: Array) -> torch.Tensor:
    """Inverse of :func:`tensor_to_array` (NumPy arrays are loaded without pickle)."""
    if array.stype != RAW_STYPE:
        return torch.from_numpy(np.array(array.numpy(), copy=True))
    dtype = _BY_NAME.get(array.dtype)
    if dtype is None:
        raise FclkitError(f"unsupported raw tensor dtype {array.dtype!r} in a Flower message")
    view, np_dtype = _RAW[dtype]
    flat = np.frombuffer(array.data, dtype=np_dtype)
    if flat.size != math.prod(array.shape):
        raise FclkitError("a tensor in a Flower message has the wrong number of bytes")
    native = flat.astype(np_dtype.newbyteorder("="), copy=True)
    out = torch.from_numpy(native)
    if view is not dtype:
        out = out.view(dtype)
    return out.reshape(tuple(array.shape))


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
