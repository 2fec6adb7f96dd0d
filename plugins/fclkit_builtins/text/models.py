"""Small byte-level text models for clients (``--client-models text-bow,text-cnn,text-gru``).

They read the ``utf8-bytes`` encoding (:mod:`fclkit.text`): an int64
``(N, max_len)`` tensor of UTF-8 bytes, ``0`` = padding. Every model trims the
batch to its longest row before working, so short texts cost little. All three
are a few ten thousand parameters and train in milliseconds per batch on a CPU.

Importing this module is light: torch loads in ``build`` (modules in :mod:`.nets`).
"""

from __future__ import annotations

from typing import Any

import attrs

from fclkit.config import boolean, float_in, int_at_least, setting
from fclkit.errors import ConfigError
from fclkit.interfaces import ClientModel
from fclkit.stream import InputSpec


def _vocab(input_spec: InputSpec) -> int:
    vocab = int((input_spec.extra or {}).get("vocab_size", 256))
    if input_spec.modality != "text" or len(input_spec.shape) != 1:
        raise ConfigError("client_models", input_spec.modality,
                          "text models take 1-D token/byte rows (modality 'text')")
    return vocab



def _check_ngrams(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4:
        raise ConfigError(attribute.name, value, "must be an integer from 1 to 4")


_dropout = float_in(0.0, 1.0, high_open=True)


class TextBoW(ClientModel):
    name = "text-bow"
    description = "hashed byte n-gram bag (fastText-like) + MLP, for utf8-bytes text"
    modalities = frozenset({"text"})

    @attrs.frozen
    class Options:
        ngrams: int = setting(3, "longest byte n-gram hashed into the bag (1-4)", _check_ngrams)
        buckets: int = setting(4096, "hash buckets of the n-gram embedding table",
                               int_at_least(16))
        dim: int = setting(32, "embedding width", int_at_least(1))
        hidden: int = setting(64, "width of the hidden layer", int_at_least(1))
        dropout: float = setting(0.0, "dropout before the output layer", _dropout)

    def build(self, input_spec: InputSpec, num_classes: int):
        _vocab(input_spec)
        o = self.options
        from .nets import ByteNgramBag

        return ByteNgramBag(o.buckets, o.dim, o.ngrams, o.hidden, o.dropout, num_classes)


class TextCNN(ClientModel):
    name = "text-cnn"
    description = "byte embeddings + 1-D convolutions (widths 3 and 5) + max pooling"
    modalities = frozenset({"text"})

    @attrs.frozen
    class Options:
        dim: int = setting(32, "byte embedding width", int_at_least(1))
        channels: int = setting(64, "channels of each convolution", int_at_least(1))
        dropout: float = setting(0.0, "dropout before the output layer", _dropout)

    def build(self, input_spec: InputSpec, num_classes: int):
        vocab = _vocab(input_spec)
        o = self.options
        from .nets import ByteCNN

        return ByteCNN(vocab, o.dim, o.channels, (3, 5), o.dropout, num_classes)


class TextGRU(ClientModel):
    name = "text-gru"
    description = "byte embeddings read by a small GRU (last hidden state classifies)"
    modalities = frozenset({"text"})

    @attrs.frozen
    class Options:
        dim: int = setting(32, "byte embedding width", int_at_least(1))
        hidden: int = setting(64, "GRU hidden size", int_at_least(1))
        bidirectional: bool = setting(False, "read the bytes in both directions", boolean)

    def build(self, input_spec: InputSpec, num_classes: int):
        vocab = _vocab(input_spec)
        o = self.options
        from .nets import ByteGRU

        return ByteGRU(vocab, o.dim, o.hidden, bool(o.bidirectional), num_classes)


TEXT_MODELS = (TextBoW, TextCNN, TextGRU)
