"""Benchmark ``langid-real``: class-incremental language identification on real sentences.

The sentences are the human-written dialogue lines of `chatterbot-corpus
<https://github.com/gunthercox/chatterbot-corpus>`_ 1.3.3 (BSD-3-Clause; the
PyPI package ``chatterbot-corpus``, 346 KB of YAML files, no dependencies):
questions and answers about greetings, food, history, science, ... in 28
languages, written by the corpus's contributors -- grammatical sentences, unlike
the word bags of ``langid``.

Everything else is ``langid``'s (:class:`~fclkit_builtins.text.langid.LangIDBenchmark`
is the base class): one class per language, UTF-8 byte rows of ``max_bytes``,
the server's own public pool of ``public_per_language`` sentences per language,
the class-incremental partition, the small models and the ``hf`` foundation
model (``minilm``) that ``fm = "auto"`` picks.

How a corpus line becomes a usable sentence (:func:`usable_sentences`):

1. every string of every conversation of every file of the language's folder,
   whitespace collapsed and stripped;
2. dropped when it has fewer than ``min_letters`` letters (``Hi``, ``Ok``, ``1963``);
3. dropped when fewer than half of its letters are in the language's script
   (:data:`SCRIPTS`: the English lines, names and code inside the Chinese,
   Japanese, Korean, Persian, Ukrainian, ... folders);
4. de-duplicated within the language on its first ``max_bytes`` bytes, ignoring
   case, spaces and punctuation (``Hi, how are you?`` = ``hi how are you``);
5. dropped from every language when two languages share it (``Edwin Hubble``,
   ``Richard Nixon``, the 91 English lines of the Swedish folder): a sentence
   in two classes is no language to identify. This looks at all 28 languages,
   so a language's pool does not depend on which others are chosen.

Per language, the usable sentences are shuffled by ``data_seed`` and cut into
the test, public and training pools in that order (so the test set stays the
same when only ``train_per_language`` changes). The corpus is small: a language
with fewer usable sentences than ``train + test + public`` is refused with a
clear error. :data:`DEFAULT_LANGUAGES` are the 13 languages that have at least
the default 200 + 60 + 30 = 290 (:func:`corpus_counts` counts them).

Known weaknesses of the data: the folders are partly translations of the same
English files (parallel topics, not parallel sentences), some folders still
hold lines of another language in the same script (English lines in Swedish or
Indonesian cannot be told apart by script), and simplified and traditional
Chinese share many characters (the pair is deliberately hard).
"""

from __future__ import annotations

import functools

import attrs

from fclkit.config import int_at_least, setting
from fclkit.errors import BenchmarkUnavailableError, ConfigError

from .langid import LangIDBenchmark, _language_seed, language_list

#: corpus folder -> (short code, English name)
LANGUAGES: dict[str, tuple[str, str]] = {
    "bengali": ("bn", "Bengali"), "chinese": ("zh", "Chinese (simplified)"),
    "dutch": ("nl", "Dutch"), "english": ("en", "English"), "french": ("fr", "French"),
    "german": ("de", "German"), "hebrew": ("he", "Hebrew"), "hindi": ("hi", "Hindi"),
    "hinglish": ("hi-latn", "Hinglish (Hindi in Latin script)"),
    "indonesian": ("id", "Indonesian"), "italian": ("it", "Italian"),
    "japanese": ("ja", "Japanese"), "korean": ("ko", "Korean"), "marathi": ("mr", "Marathi"),
    "oriya": ("or", "Odia"), "persian": ("fa", "Persian"), "portuguese": ("pt", "Portuguese"),
    "russian": ("ru", "Russian"), "spanish": ("es", "Spanish"), "swedish": ("sv", "Swedish"),
    "tamil": ("ta", "Tamil"), "telugu": ("te", "Telugu"), "thai": ("th", "Thai"),
    "traditionalchinese": ("zh-hant", "Chinese (traditional)"),
    "turkish": ("tr", "Turkish"), "ukrainian": ("uk", "Ukrainian"), "urdu": ("ur", "Urdu"),
    "yoruba": ("yo", "Yoruba"),
}

_BY_CODE = {code: folder for folder, (code, _) in LANGUAGES.items()}

#: words of the Unicode character names of each language's script (default: LATIN)
SCRIPTS: dict[str, tuple[str, ...]] = {
    "bengali": ("BENGALI",), "chinese": ("CJK",), "traditionalchinese": ("CJK",),
    "japanese": ("HIRAGANA", "KATAKANA", "CJK"), "korean": ("HANGUL",),
    "hebrew": ("HEBREW",), "hindi": ("DEVANAGARI",), "marathi": ("DEVANAGARI",),
    "oriya": ("ORIYA",), "persian": ("ARABIC",), "urdu": ("ARABIC",),
    "russian": ("CYRILLIC",), "ukrainian": ("CYRILLIC",), "tamil": ("TAMIL",),
    "telugu": ("TELUGU",), "thai": ("THAI",),
}

#: The languages with at least 290 usable sentences at the default options (corpus
#: 1.3.3), in the corpus's alphabetical order: seven in Latin script, two Chinese
#: scripts, Japanese, Korean, Persian and Ukrainian.
DEFAULT_LANGUAGES = ("chinese", "dutch", "english", "indonesian", "italian", "japanese",
                     "korean", "persian", "portuguese", "spanish", "traditionalchinese",
                     "turkish", "ukrainian")

_INSTALL_HINT = "pip install chatterbot-corpus"


_to_languages, _check_languages = language_list(
    tuple(LANGUAGES), aliases=_BY_CODE,
    unknown=f"chatterbot-corpus has: {', '.join(LANGUAGES)} (or their codes: "
    f"{', '.join(_BY_CODE)})")


def _data_dir():
    """The corpus's ``data`` folder (a Traversable), or a clear error when it is absent."""
    from importlib import resources

    try:
        root = resources.files("chatterbot_corpus") / "data"
    except ModuleNotFoundError:
        raise BenchmarkUnavailableError(
            "benchmark 'langid-real' needs the package chatterbot-corpus (its real sentences); "
            "it is not installed", hint=_INSTALL_HINT) from None
    if not root.is_dir():
        raise BenchmarkUnavailableError(
            "the installed chatterbot-corpus has no data folder; reinstall it",
            hint="pip install --force-reinstall chatterbot-corpus") from None
    return root


def _yaml_loader():
    try:
        import yaml
    except ImportError:  # pragma: no cover - transformers requires PyYAML
        raise BenchmarkUnavailableError(
            "benchmark 'langid-real' reads chatterbot-corpus's YAML files with PyYAML, "
            "which is not installed", hint="pip install pyyaml") from None
    return yaml, getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.cache
def corpus_lines(language: str) -> tuple[str, ...]:
    """Every string of every conversation in the language's folder, whitespace collapsed
    (files in name order, lines in file order; empty ones dropped)."""
    if language not in LANGUAGES:
        raise ConfigError("languages", language, "unknown language; chatterbot-corpus has: "
                          + ", ".join(LANGUAGES))
    folder = _data_dir() / language
    if not folder.is_dir():
        raise BenchmarkUnavailableError(
            f"the installed chatterbot-corpus has no {language!r} folder (this benchmark "
            "was made for chatterbot-corpus 1.3.3)", hint="pip install 'chatterbot-corpus>=1.3.3'")
    yaml, loader = _yaml_loader()
    out: list[str] = []
    for entry in sorted((e for e in folder.iterdir() if e.name.endswith((".yml", ".yaml"))),
                        key=lambda e: e.name):
        doc = yaml.load(entry.read_text(encoding="utf-8"), Loader=loader) or {}
        for conversation in doc.get("conversations") or ():
            for line in conversation if isinstance(conversation, list) else ():
                if isinstance(line, str):
                    text = " ".join(line.replace("\x00", "").split())
                    if text:
                        out.append(text)
    return tuple(out)


def script_share(text: str, scripts: tuple[str, ...]) -> float:
    """The fraction of ``text``'s letters whose Unicode name contains one of ``scripts``."""
    import unicodedata

    letters = [ch for ch in text if ch.isalpha()]
    if not letters:
        return 0.0
    return sum(any(s in unicodedata.name(ch, "") for s in scripts) for ch in letters) / len(
        letters)


def _key(text: str, max_bytes: int) -> str:
    """What two sentences must differ in: their first ``max_bytes`` bytes (what a model
    sees), ignoring case, spaces and punctuation."""
    from fclkit.text import truncate_utf8

    seen = truncate_utf8(text.encode("utf-8"), max_bytes).decode("utf-8")
    return "".join(ch for ch in seen.casefold() if ch.isalnum())


@functools.cache
def _candidates(language: str, min_letters: int, max_bytes: int) -> dict[str, str]:
    """Steps 1-4 of the module's recipe: key -> first sentence with that key."""
    scripts = SCRIPTS.get(language, ("LATIN",))
    out: dict[str, str] = {}
    for text in corpus_lines(language):
        if sum(ch.isalpha() for ch in text) < min_letters:
            continue
        if script_share(text, scripts) < 0.5:
            continue
        out.setdefault(_key(text, max_bytes), text)
    return out


@functools.cache
def _usable(min_letters: int, max_bytes: int) -> dict[str, tuple[str, ...]]:
    owners: dict[str, int] = {}
    root = _data_dir()
    cands = {lang: _candidates(lang, min_letters, max_bytes) for lang in LANGUAGES
             if (root / lang).is_dir()}  # a language absent here fails in usable_sentences
    for keys in cands.values():
        for k in keys:
            owners[k] = owners.get(k, 0) + 1
    return {lang: tuple(text for k, text in keys.items() if owners[k] == 1)
            for lang, keys in cands.items()}


def usable_sentences(language: str, *, min_letters: int = 4,
                     max_bytes: int = 128) -> tuple[str, ...]:
    """The language's usable sentences (the module's recipe), in corpus order."""
    if language not in LANGUAGES:
        raise ConfigError("languages", language, "unknown language; chatterbot-corpus has: "
                          + ", ".join(LANGUAGES))
    usable = _usable(min_letters, max_bytes)
    if language not in usable:
        corpus_lines(language)  # raises: the installed corpus lacks the language's folder
    return usable[language]


def corpus_counts(*, min_letters: int = 4, max_bytes: int = 128) -> dict[str, int]:
    """Usable sentences per language, most first."""
    counts = {lang: len(s) for lang, s in _usable(min_letters, max_bytes).items()}
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


class RealLangIDBenchmark(LangIDBenchmark):
    name = "langid-real"
    description = ("language identification on real sentences of chatterbot-corpus "
                   "(13 languages by default), as UTF-8 byte rows; offline")

    @attrs.frozen
    class Options:
        languages: tuple = setting(
            DEFAULT_LANGUAGES, "languages, one class each: comma list of chatterbot-corpus "
            "names or codes (" + ", ".join(f"{f}={c}" for f, (c, _) in LANGUAGES.items())
            + "); the default: the 13 with at least 290 usable sentences",
            _check_languages, _to_languages)
        train_per_language: int = setting(200, "training sentences per language",
                                          int_at_least(2))
        test_per_language: int = setting(60, "test sentences per language", int_at_least(1))
        public_per_language: int = setting(
            30, "sentences per language in the server's own public set (0: carve "
            "public_fraction out of the training pool instead)", int_at_least(0))
        min_letters: int = setting(4, "corpus lines with fewer letters are dropped",
                                   int_at_least(1))
        max_bytes: int = setting(128, "bytes per encoded sentence (longer ones are cut at a "
                                 "character boundary)", int_at_least(8))
        data_seed: int = setting(0, "seed of the split of the corpus into test, public and "
                                 "training sentences (independent of the run's seed)",
                                 int_at_least(0))

    def class_names(self) -> tuple[str, ...]:
        return tuple(LANGUAGES[lang][1] for lang in self.options.languages)

    def sentences(self) -> dict[str, list[list[str]]]:
        """The chosen sentences: split -> one list per language (in option order)."""
        import numpy as np

        o = self.options
        sizes = {"test": o.test_per_language, "public": o.public_per_language,
                 "train": o.train_per_language}
        need = sum(sizes.values())
        pools: dict[str, list[list[str]]] = {"train": [], "test": [], "public": []}
        short = []
        for lang in o.languages:
            have = usable_sentences(lang, min_letters=o.min_letters, max_bytes=o.max_bytes)
            if len(have) < need:
                short.append(f"{lang} has {len(have)}")
        if short:
            raise ConfigError(
                "benchmark_options", {k: v for k, v in attrs.asdict(o).items()
                                      if k.endswith("_per_language")},
                f"train + test + public = {need} sentences per language, but "
                f"{', '.join(short)} usable sentences; ask for fewer per language or drop "
                "those languages")
        for lang in o.languages:
            have = usable_sentences(lang, min_letters=o.min_letters, max_bytes=o.max_bytes)
            order = np.random.default_rng(_language_seed(o.data_seed, "chatterbot:" + lang)
                                          ).permutation(len(have))
            start = 0
            for split, n in sizes.items():
                pools[split].append([have[i] for i in order[start:start + n]])
                start += n
        return pools


__all__ = ["DEFAULT_LANGUAGES", "LANGUAGES", "SCRIPTS", "RealLangIDBenchmark",
           "corpus_counts", "corpus_lines", "script_share", "usable_sentences"]
