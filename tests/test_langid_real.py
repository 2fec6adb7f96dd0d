"""The benchmark ``langid-real``: language identification on chatterbot-corpus sentences."""

from __future__ import annotations

import math

import pytest
import torch

import fclkit
from fclkit.errors import BenchmarkUnavailableError, ConfigError
from fclkit.interfaces import StreamSpec
from fclkit.plugins import build_registry
from fclkit.text import decode_texts, truncate_utf8

pytest.importorskip("chatterbot_corpus", reason="langid-real needs the package "
                    "chatterbot-corpus (pip install chatterbot-corpus)")

from fclkit_builtins.text import chatterbot  # noqa: E402
from fclkit_builtins.text.chatterbot import (  # noqa: E402
    DEFAULT_LANGUAGES,
    RealLangIDBenchmark,
    corpus_counts,
    usable_sentences,
)
from fclkit_builtins.text.langid import LangIDBenchmark  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(languages="english,german,japanese,ukrainian", train_per_language=24,
             test_per_language=6, public_per_language=6)


def spec(seed=0, clients=3, tasks=5):
    return StreamSpec(num_clients=clients, num_tasks=tasks, seed=seed, partition="iid",
                      dirichlet_alpha=0.5, public_fraction=0.1)


def cut(text):
    """What a 128-byte row keeps of ``text``."""
    return truncate_utf8(text.encode(), 128).decode()


def build(seed=0, clients=2, tasks=2, **options):
    opts = RealLangIDBenchmark.Options(**{**SMALL, **options})
    return RealLangIDBenchmark(opts).build(spec(seed, clients, tasks))


def texts_by_class(stream, split="train"):
    out: dict[int, set[str]] = {}
    for client in stream.clients:
        for task in client.tasks:
            x, y = (task.x_train, task.y_train) if split == "train" else (task.x_test,
                                                                           task.y_test)
            for text, label in zip(decode_texts(x), y.tolist(), strict=True):
                out.setdefault(label, set()).add(text)
    return out


def test_registered_under_its_name_and_shares_langids_machinery():
    entry = build_registry().get("benchmark", "langid-real")
    assert entry.cls is RealLangIDBenchmark and issubclass(entry.cls, LangIDBenchmark)
    assert entry.cls.default_foundation_model == "hf"  # fm = auto: MiniLM, like langid
    assert entry.cls.default_client_model == "text-cnn"


def test_passes_the_benchmark_contract():
    from fclkit import testing

    testing.check_benchmark(RealLangIDBenchmark)


def test_the_sentences_are_real_corpus_lines_with_their_language_as_class():
    s = build()
    assert s.class_names == ("English", "German", "Japanese", "Ukrainian")
    assert s.input_spec.shape == (128,) and s.input_spec.extra["encoding"] == "utf8-bytes"
    by_class = texts_by_class(s)
    assert [len(by_class[c]) for c in range(4)] == [24] * 4
    for c, lang in enumerate(("english", "german", "japanese", "ukrainian")):
        # every training sentence is a line of that language (its first 128 bytes)
        lines = {cut(t) for t in chatterbot.corpus_lines(lang)}
        assert by_class[c] <= lines
    # a known line of the corpus (english/greetings.yml) is in the usable pool, and the
    # whole pool shows up when it is asked for in full
    assert "Hi, How is it going?" in usable_sentences("english")
    german = usable_sentences("german")
    opts = dict(languages="german,english", train_per_language=len(german) - 2,
                test_per_language=1, public_per_language=1)
    full = build(**opts)
    seen = texts_by_class(full)[0] | texts_by_class(full, "test")[0] | set(
        decode_texts(full.public.x[full.public.y == 0]))
    assert seen == {cut(t) for t in german}
    assert "Wie geht es dir?" in german  # german/greetings.yml


def test_cleaning_drops_short_lines_foreign_script_and_shared_sentences():
    assert "Hi" in chatterbot.corpus_lines("english")
    assert "Hi" not in usable_sentences("english")  # fewer than min_letters = 4
    # latin-script lines inside the Japanese folder are not Japanese
    latin_in_japanese = [t for t in chatterbot.corpus_lines("japanese")
                         if chatterbot.script_share(t, ("LATIN",)) > 0.5
                         and sum(ch.isalpha() for ch in t) >= 4]
    assert latin_in_japanese and not set(latin_in_japanese) & set(usable_sentences("japanese"))
    # a line in two languages' folders is in neither pool
    shared = set(chatterbot.corpus_lines("english")) & set(chatterbot.corpus_lines("swedish"))
    assert "Errors should never pass silently." in shared
    assert not shared & set(usable_sentences("english") + usable_sentences("swedish"))


def test_splits_are_disjoint_and_distinct_across_languages():
    s = build(clients=3)
    rows = lambda x: {bytes(r.to(torch.uint8).tolist()) for r in x}  # noqa: E731
    train = set().union(*(rows(t.x_train) for c in s.clients for t in c.tasks))
    test = set().union(*(rows(t.x_test) for c in s.clients for t in c.tasks))
    public = rows(s.public.x)
    assert len(train) == 4 * 24 and len(test) == 4 * 6 and len(public) == 4 * 6
    assert not train & test and not train & public and not test & public


def test_defaults_are_the_languages_with_enough_sentences():
    counts = corpus_counts()
    need = 200 + 60 + 30
    assert set(DEFAULT_LANGUAGES) == {lang for lang, n in counts.items() if n >= need}
    assert RealLangIDBenchmark.Options().languages == DEFAULT_LANGUAGES
    s = RealLangIDBenchmark().build(spec())
    assert s.num_classes == 13 and s.num_tasks == 5
    assert sum(t.num_train for c in s.clients for t in c.tasks) == 13 * 200
    assert len(s.public.x) == 13 * 30 and s.public.y is not None


def test_deterministic_under_the_data_seed_and_the_run_seed_only_reshuffles():
    a, b = build(), build()
    for ca, cb in zip(a.clients, b.clients, strict=True):
        for ta, tb in zip(ca.tasks, cb.tasks, strict=True):
            assert torch.equal(ta.x_train, tb.x_train) and torch.equal(ta.y_train, tb.y_train)
            assert torch.equal(ta.x_test, tb.x_test)
    assert torch.equal(a.public.x, b.public.x)
    other_run = build(seed=1)
    assert texts_by_class(other_run) == texts_by_class(a)  # same data, other partition
    other_data = build(data_seed=1)
    assert texts_by_class(other_data) != texts_by_class(a)
    # the test pool is drawn first: more training sentences leave the test set alone
    assert texts_by_class(build(train_per_language=40), "test") == texts_by_class(a, "test")


def test_languages_accept_codes():
    opts = RealLangIDBenchmark.Options(languages="en, zh-hant ,KO")
    assert opts.languages == ("english", "traditionalchinese", "korean")


@pytest.mark.parametrize("options, words", [
    ({"languages": "english,klingon"}, "unknown language(s) klingon"),
    ({"languages": "english"}, "at least 2 languages"),
    ({"languages": "english,en"}, "names a language twice"),
    ({"train_per_language": 1}, "integer >= 2"),
])
def test_bad_options_are_refused_clearly(options, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
        RealLangIDBenchmark.Options(**options)


def test_too_few_sentences_for_the_asked_numbers_names_the_language():
    n_thai = len(usable_sentences("thai"))
    with pytest.raises(ConfigError) as err:
        build(languages="english,thai")
    message = str(err.value)
    assert f"thai has {n_thai} usable sentences" in message and "english" not in message.split(
        "but")[1]
    assert "ask for fewer per language or drop those languages" in message
    with pytest.raises(ConfigError, match="tasks"):
        build(tasks=5)  # 4 languages: at most 4 class-incremental tasks


def test_missing_corpus_says_how_to_install_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "chatterbot_corpus", None)  # as if not installed
    chatterbot._usable.cache_clear()
    try:
        with pytest.raises(BenchmarkUnavailableError) as err:
            RealLangIDBenchmark().build(spec())
    finally:
        chatterbot._usable.cache_clear()
    assert "chatterbot-corpus" in str(err.value) and err.value.hint == (
        "pip install chatterbot-corpus")


TINY = dict(tasks=2, rounds=1, clients=2, epochs=1, loggers="none", threads=1,
            benchmark="langid-real", benchmark_options=SMALL)


def _finite(summary):
    return all(math.isfinite(v) and 0.0 <= v <= 1.0
               for row in summary["accuracy_matrix"] for v in row)


def test_tiny_run_with_minilm_and_heterogeneous_small_models(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = fclkit.ExperimentConfig(**TINY, cl="replay", fusion="one-by-one",
                                     client_models=("text-bow", "text-gru"),
                                     fm="auto", output=str(tmp_path))
    result = fclkit.run(config, write_results=False)
    assert result.config.fm == "hf" and result.config.fm_options.get("model", "minilm") == (
        "minilm")
    assert result.metrics["failures"] == []
    for model in ("small", "fm"):
        summary = result.summary(model)
        assert _finite(summary) and math.isfinite(summary["average_accuracy"])


def test_tiny_fedavg_run_with_the_default_small_model(tmp_path):
    config = fclkit.ExperimentConfig(**TINY, cl="replay", fusion="fedavg",
                                     output=str(tmp_path))
    result = fclkit.run(config, write_results=False)
    assert set(result.config.client_models) == {"text-cnn"}  # client_models = auto
    summary = result.summary("small")
    assert _finite(summary) and math.isfinite(summary["average_forgetting"])
