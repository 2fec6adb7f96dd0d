"""One-by-one's transfer set: the public set with augmented views and mixes added."""

from __future__ import annotations

import pytest
import torch

import fclkit
from fclkit.stream import UNLABELLED, PublicSet
from fclkit.text import encode_texts
from fclkit_builtins.one_by_one.transfer import expand_public

pytestmark = pytest.mark.usefixtures("one_thread")


def _images(n=6):
    torch.manual_seed(0)
    return PublicSet(x=torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8),
                     y=torch.tensor([0, 1, UNLABELLED, 2, UNLABELLED, 1][:n]))


def test_originals_come_first_with_their_labels_and_extras_are_unlabelled():
    public = _images()
    out = expand_public(public, "image", views=2, mixes=3, seed=0)
    n = len(public.x)
    assert len(out.x) == n * (1 + 2 + 3)
    assert torch.equal(out.x[:n], public.x.float() / 255)  # uint8 read as x / 255
    assert torch.equal(out.y[:n], public.y)
    assert (out.y[n:] == UNLABELLED).all()
    assert torch.equal(out.labelled_index, public.labelled_index)


def test_the_transfer_set_is_fixed_by_the_seed():
    a = expand_public(_images(), "image", 1, 1, seed=3)
    b = expand_public(_images(), "image", 1, 1, seed=3)
    c = expand_public(_images(), "image", 1, 1, seed=4)
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)


def test_image_views_move_pixels_and_mixes_stay_between_their_parents():
    public = _images()
    out = expand_public(public, "image", 1, 2, seed=0)
    n, x = len(public.x), public.x.float() / 255
    views = out.x[n:2 * n]
    assert not torch.equal(views, x) and 0 <= float(views.min()) and float(views.max()) <= 1
    mixes = out.x[2 * n:]
    assert float(mixes.min()) >= float(x.min()) and float(mixes.max()) <= float(x.max())


def test_text_views_are_crops_and_mixes_splice_two_texts():
    texts = ["the quick brown fox", "le renard brun rapide", "der schnelle Fuchs"]
    public = PublicSet(x=encode_texts(texts, 32))
    out = expand_public(public, "text", views=3, mixes=2, seed=0)
    decoded = [bytes(r[r != 0].tolist()).decode("utf-8", "replace") for r in out.x]
    assert decoded[:3] == texts
    for i, view in enumerate(decoded[3:12]):
        original = texts[i % 3]
        assert view in original and len(view) >= len(original) / 2
    for mix in decoded[12:]:  # a start of one text, then an end of one
        assert any(mix == a[:h] + b[len(b) - (len(mix) - h):]
                   for a in texts for b in texts for h in range(min(len(a), len(mix)) + 1))
    assert out.x.dtype == torch.long and out.y is None


def test_nothing_added_leaves_the_public_set_as_it_is():
    public = _images()
    assert expand_public(public, "image", 0, 0, seed=0) is public


def test_one_by_one_distils_on_the_larger_transfer_set():
    base = dict(fusion="one-by-one", cl="replay", clients=2, tasks=2, rounds=1, epochs=1,
                threads=1, loggers=("none",), checkpoint=False, cache_dir="none")
    plain = fclkit.run(fclkit.ExperimentConfig(**base), write_results=False).metrics
    larger = fclkit.run(fclkit.ExperimentConfig(
        **base, fusion_options={"public_views": 1, "public_mixes": 1}),
        write_results=False).metrics
    assert larger["mean"]["fm"] != plain["mean"]["fm"]  # the FM learnt from more inputs
    # the small models train the same way until the first fusion
    assert (larger["mean"]["small"]["accuracy_matrix"][0]
            == plain["mean"]["small"]["accuracy_matrix"][0])
