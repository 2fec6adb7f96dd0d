"""The utf8-bytes text encoding: round trips, padding, truncation at character boundaries."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fclkit.text import (
    decode_row,
    decode_texts,
    encode_texts,
    is_utf8_bytes_spec,
    text_input_spec,
    truncate_utf8,
)

SAMPLES = ["Hello, world.", "Grüße aus Köln – ça va? ñ", "Привет, мир!", "日本語のテキスト",
           "emoji 🎉👩‍🔬", "العربية", ""]


def test_round_trips_unicode_and_pads_with_zeros():
    x = encode_texts(SAMPLES, 64)
    assert x.dtype == torch.int64 and x.shape == (len(SAMPLES), 64)
    assert int(x.min()) >= 0 and int(x.max()) <= 255
    assert decode_texts(x) == SAMPLES
    row = x[1]
    n = len(SAMPLES[1].encode("utf-8"))
    assert (row[:n] != 0).all() and (row[n:] == 0).all()


def test_truncation_never_splits_a_character():
    text = "Ж" * 10  # 2 bytes each
    x = encode_texts([text, "日本語"], 7)  # 7 bytes: 3 whole Ж; 2 whole kanji (6 bytes)
    assert decode_texts(x) == ["ЖЖЖ", "日本"]
    assert truncate_utf8(b"abc", 2) == b"ab"


def test_nul_is_reserved_for_padding_and_spec_describes_the_encoding():
    assert decode_row(encode_texts(["a\x00b"], 8)[0]) == "ab"
    spec = text_input_spec(32)
    assert spec.modality == "text" and spec.shape == (32,)
    assert spec.extra == {"encoding": "utf8-bytes", "vocab_size": 256}
    assert is_utf8_bytes_spec(spec)
    assert encode_texts(["x"], 4, as_tensor=False).dtype.name == "int64"
    with pytest.raises(ValueError):
        encode_texts(["x"], 0)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
               max_size=40), st.integers(min_value=1, max_value=48))
def test_any_text_decodes_to_a_prefix_of_itself(text, max_len):
    decoded = decode_texts(encode_texts([text], max_len))[0]
    assert text.startswith(decoded)
    assert len(decoded.encode("utf-8")) <= max_len
    if len(text.encode("utf-8")) <= max_len:
        assert decoded == text
