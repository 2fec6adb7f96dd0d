"""Text as tensors: UTF-8 bytes, zero-padded (the ``utf8-bytes`` input encoding).

A text benchmark does not know which models will read it: small byte-level
models on the clients, a foundation model with its own tokenizer on the server.
So text travels as what every model can take -- the UTF-8 bytes of each
example in an ``int64`` tensor of shape ``(N, max_len)``, padded with ``0`` --
described by :func:`text_input_spec`::

    InputSpec("text", (max_len,), extra={"encoding": "utf8-bytes", "vocab_size": 256})

Byte ``0`` is reserved for padding (NUL characters in the text are dropped).
Texts longer than ``max_len`` bytes are cut at a character boundary, so every
row decodes to valid UTF-8. A foundation model decodes the rows back to strings
(:func:`decode_texts`) and tokenizes them with its own tokenizer.

Pure Python + numpy (torch only when a tensor is asked for).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

ENCODING = "utf8-bytes"
VOCAB_SIZE = 256
PAD = 0


def text_input_spec(max_len: int):
    """The :class:`~fclkit.stream.InputSpec` of texts encoded by :func:`encode_texts`."""
    from fclkit.stream import InputSpec

    return InputSpec("text", (int(max_len),),
                     extra={"encoding": ENCODING, "vocab_size": VOCAB_SIZE})


def is_utf8_bytes_spec(input_spec: Any) -> bool:
    """Whether ``input_spec`` describes texts in this encoding."""
    return (getattr(input_spec, "modality", None) == "text"
            and (getattr(input_spec, "extra", None) or {}).get("encoding") == ENCODING)


def truncate_utf8(data: bytes, max_len: int) -> bytes:
    """``data`` cut to at most ``max_len`` bytes without splitting a character."""
    if len(data) <= max_len:
        return data
    cut = max_len
    # step back over UTF-8 continuation bytes (0b10xxxxxx) so no character is split
    while cut > 0 and (data[cut] & 0xC0) == 0x80:
        cut -= 1
    return data[:cut]


def encode_texts(texts: Iterable[str], max_len: int, *, as_tensor: bool = True) -> Any:
    """Encode strings as a zero-padded ``(N, max_len)`` int64 array of UTF-8 bytes.

    Returns a ``torch.Tensor`` (or a numpy array with ``as_tensor=False``).
    """
    import numpy as np

    if max_len < 1:
        raise ValueError("max_len must be >= 1")
    rows = [truncate_utf8(t.replace("\x00", "").encode("utf-8"), max_len) for t in texts]
    out = np.zeros((len(rows), max_len), dtype=np.int64)
    for i, data in enumerate(rows):
        if data:
            out[i, :len(data)] = np.frombuffer(data, dtype=np.uint8)
    if not as_tensor:
        return out
    import torch

    return torch.from_numpy(out)


def decode_row(row: Any) -> str:
    """One encoded row (tensor, array or sequence of ints) back to its string."""
    import numpy as np

    if hasattr(row, "detach"):
        row = row.detach().cpu().numpy()
    arr = np.asarray(row)
    data = arr[arr != PAD].astype(np.uint8).tobytes()
    return data.decode("utf-8", errors="replace")


def decode_texts(x: Any) -> list[str]:
    """A ``(N, max_len)`` batch of encoded rows back to ``N`` strings."""
    import numpy as np

    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"expected a (N, max_len) batch of byte rows, got shape {arr.shape}")
    return [decode_row(r) for r in arr]


def lengths(x: Any) -> Any:
    """Number of non-padding bytes of each row (same type as ``x``)."""
    return (x != PAD).sum(-1)


__all__ = ["ENCODING", "PAD", "VOCAB_SIZE", "decode_row", "decode_texts", "encode_texts",
           "is_utf8_bytes_spec", "lengths", "text_input_spec", "truncate_utf8"]
