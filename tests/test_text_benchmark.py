"""The offline language-identification benchmark ``langid``."""

import pytest
import torch

from fclkit.errors import ConfigError
from fclkit.interfaces import StreamSpec
from fclkit.text import decode_texts
from fclkit_builtins.text.langid import DEFAULT_LANGUAGES, LANGUAGES, LangIDBenchmark


def spec(seed=0, clients=3, tasks=5, public_fraction=0.1):
    return StreamSpec(num_clients=clients, num_tasks=tasks, seed=seed, partition="iid",
                      dirichlet_alpha=0.5, public_fraction=public_fraction)


SMALL = dict(train_per_language=30, test_per_language=10, public_per_language=8)


def rows(x):
    return {bytes(r.to(torch.uint8).tolist()) for r in x}


def all_client_rows(stream, split="train"):
    out = set()
    for client in stream.clients:
        for task in client.tasks:
            out |= rows(task.x_train if split == "train" else task.x_test)
    return out


@pytest.fixture(scope="module")
def default_stream():
    return LangIDBenchmark().build(spec())


def test_default_stream_is_ten_languages_in_five_tasks_of_two(default_stream):
    s = default_stream
    assert s.num_classes == 10 and len(DEFAULT_LANGUAGES) == 10
    assert s.input_spec.modality == "text" and s.input_spec.shape == (128,)
    assert s.input_spec.extra["encoding"] == "utf8-bytes"
    assert s.class_names[:2] == ("English", "German")
    assert s.num_tasks == 5 and all(len(t.classes) == 2 for t in s.clients[0].tasks)
    assert sum(t.num_train for c in s.clients for t in c.tasks) == 10 * 240
    assert len(s.public.x) == 10 * 30 and s.public.y is not None
    x = s.clients[0].tasks[0].x_train
    assert x.dtype == torch.int64
    assert all(text and text.endswith(".") for text in decode_texts(x[:20]))


def test_public_set_and_splits_are_disjoint(default_stream):
    s = default_stream
    train, test, public = all_client_rows(s), all_client_rows(s, "test"), rows(s.public.x)
    assert len(public) == len(s.public.x)  # no duplicate sentence either
    assert not public & train and not public & test and not train & test


def test_same_options_give_the_same_data_and_the_seed_only_reshuffles():
    a = LangIDBenchmark(LangIDBenchmark.Options(**SMALL)).build(spec(seed=0))
    b = LangIDBenchmark(LangIDBenchmark.Options(**SMALL)).build(spec(seed=0))
    for ca, cb in zip(a.clients, b.clients, strict=True):
        for ta, tb in zip(ca.tasks, cb.tasks, strict=True):
            assert torch.equal(ta.x_train, tb.x_train) and torch.equal(ta.y_train, tb.y_train)
    assert torch.equal(a.public.x, b.public.x)
    c = LangIDBenchmark(LangIDBenchmark.Options(**SMALL)).build(spec(seed=1))
    assert c.class_order != a.class_order
    assert all_client_rows(c) == all_client_rows(a)  # same sentences, other split
    d = LangIDBenchmark(LangIDBenchmark.Options(**SMALL, data_seed=1)).build(spec(seed=0))
    assert not all_client_rows(d) & all_client_rows(a)


def test_public_fraction_is_used_when_no_own_public_pool():
    opts = LangIDBenchmark.Options(train_per_language=20, test_per_language=5,
                                   public_per_language=0)
    s = LangIDBenchmark(opts).build(spec(public_fraction=0.25, tasks=2))
    assert len(s.public.x) == 10 * 5
    assert not rows(s.public.x) & all_client_rows(s)


def test_every_language_has_its_own_word_list():
    """Faker falls back to Latin lorem ipsum for most locales: ours must not."""
    from faker import Faker

    latin = Faker("la").get_words_list()
    lists = {}
    for code, (locale, _) in LANGUAGES.items():
        words = tuple(Faker(locale).get_words_list())
        if code != "la":
            assert list(words) != list(latin), code
        lists[code] = words
    assert len(set(lists.values())) == len(LANGUAGES)
    assert Faker("pt_BR").get_words_list() == latin  # why locales are not free-form


def test_languages_option_is_validated_and_accepts_all():
    assert LangIDBenchmark.Options(languages="ru, uk ,mk").languages == ("ru", "uk", "mk")
    assert len(LangIDBenchmark.Options(languages="all").languages) == len(LANGUAGES)
    for bad in ("en,pt", "en", "en,en"):
        with pytest.raises(ConfigError):
            LangIDBenchmark.Options(languages=bad)
    with pytest.raises(ConfigError, match="at most 3"):
        LangIDBenchmark(LangIDBenchmark.Options(languages="en,de,fr", **SMALL)).build(spec())


def test_the_registry_finds_the_text_components():
    import fclkit_builtins.text
    from fclkit.plugins import build_registry

    registry = build_registry(extra_plugins=[fclkit_builtins.text], load_entry_points=False)
    assert "langid" in registry.names("benchmark")
    assert {"text-bow", "text-cnn", "text-gru"} <= set(registry.names("client_model"))
