"""Benchmark ``langid``: class-incremental language identification, generated offline.

Every class is a language; its examples are sentences written by `faker
<https://faker.readthedocs.io>`_'s ``lorem`` provider from that language's own
word list (e.g. ``Sohn in Frau Licht hängen Stadt.``). They are bags of real
words, not grammatical sentences: a model identifies the language from its
vocabulary, spelling and script.

Which locales really differ (checked with Faker 40): only the 25 languages in
:data:`LANGUAGES` ship their own lorem word list. Every other locale -- even
``en_GB``, ``pt_BR``, ``sv_SE``, ``fi_FI``, ``tr_TR``, ``ko_KR``, ``hi_IN`` --
silently falls back to Latin *lorem ipsum*, and regional variants share one list
(``de_AT`` = ``de_DE``, ``es_MX`` = ``es_ES``, ``nl_BE`` = ``nl_NL``, ``tl_PH`` =
``fil_PH``; ``zh_TW`` is ``zh_CN`` in traditional characters). So languages are
chosen by the codes below, never by arbitrary locale names.

The sentences are generated once from ``data_seed`` (the data set is the same
for every run seed, like a real data set; the run's seed shuffles the class
order and the client partition), de-duplicated across languages and splits,
and encoded as UTF-8 bytes (:mod:`fclkit.text`). Same Faker version +
same options = same data. The server's public set is its own pool of
``public_per_language`` sentences per language, disjoint from every client's
data (set it to 0 to carve ``public_fraction`` out of the training pool instead).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from fclkit.config import int_at_least, setting
from fclkit.errors import BenchmarkUnavailableError, ConfigError
from fclkit.interfaces import Benchmark, StreamSpec
from fclkit.stream import FederatedStream

#: language code -> (Faker locale with its own lorem word list, English name)
LANGUAGES: dict[str, tuple[str, str]] = {
    "en": ("en_US", "English"), "de": ("de_DE", "German"), "fr": ("fr_FR", "French"),
    "es": ("es_ES", "Spanish"), "it": ("it_IT", "Italian"), "nl": ("nl_NL", "Dutch"),
    "pl": ("pl_PL", "Polish"), "cs": ("cs_CZ", "Czech"), "ru": ("ru_RU", "Russian"),
    "uk": ("uk_UA", "Ukrainian"), "da": ("da_DK", "Danish"), "la": ("la", "Latin"),
    "az": ("az_AZ", "Azerbaijani"), "fil": ("fil_PH", "Filipino"),
    "vi": ("vi_VN", "Vietnamese"), "el": ("el_GR", "Greek"), "mk": ("mk_MK", "Macedonian"),
    "ja": ("ja_JP", "Japanese"), "zh": ("zh_CN", "Chinese"), "ar": ("ar_AA", "Arabic"),
    "fa": ("fa_IR", "Persian"), "he": ("he_IL", "Hebrew (lorem-ipsum style)"),
    "hy": ("hy_AM", "Armenian"), "bn": ("bn_BD", "Bengali"), "th": ("th_TH", "Thai"),
}

#: The default: ten languages, eight in Latin script and two close Cyrillic ones,
#: so that neither the script nor a single letter gives the class away.
DEFAULT_LANGUAGES = ("en", "de", "fr", "es", "it", "nl", "pl", "cs", "ru", "uk")

_MAX_TRIES_PER_SENTENCE = 50


def _language_seed(data_seed: int, code: str) -> int:
    """A seed per language that does not depend on which other languages are chosen."""
    import hashlib

    digest = hashlib.blake2b(f"langid:{data_seed}:{code}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def language_list(known: Sequence[str], *, unknown: str, aliases: Mapping[str, str] = {},
                  allow_all: bool = False) -> tuple[Any, Any]:
    """The (converter, validator) of a ``languages`` option over the names ``known``: a
    comma list or a sequence, lower-cased, ``aliases`` mapped to names, and ``'all'``
    when ``allow_all``; ``unknown`` follows "unknown language(s) X; " in the error."""
    names = ", ".join(known)

    def convert(value: Any) -> Any:
        if isinstance(value, str):
            if allow_all and value.strip().lower() == "all":
                return tuple(known)
            value = [part for part in value.split(",") if part.strip()]
        if isinstance(value, (list, tuple)):
            return tuple(aliases.get(n, n) for n in (str(v).strip().lower() for v in value))
        return value

    def check(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
        listing = "(comma list or 'all')" if allow_all else "(comma list)"
        if not isinstance(value, tuple) or len(value) < 2:
            raise ConfigError(attribute.name, value,
                              f"must name at least 2 languages {listing} of: {names}")
        missing = [v for v in value if v not in known]
        if missing:
            raise ConfigError(attribute.name, value,
                              f"unknown language(s) {', '.join(missing)}; {unknown}")
        if len(set(value)) != len(value):
            raise ConfigError(attribute.name, value, "names a language twice")

    return convert, check


_to_codes, _check_codes = language_list(
    tuple(LANGUAGES), allow_all=True,
    unknown="Faker has its own word list only for: " + ", ".join(LANGUAGES))


class LangIDBenchmark(Benchmark):
    name = "langid"
    description = ("language identification (10 languages by default) from Faker's word "
                   "lists, as UTF-8 byte rows; offline")
    default_foundation_model = "hf"
    default_client_model = "text-cnn"  # the strongest of the three (replay: 85-90 %)

    @attrs.frozen
    class Options:
        languages: tuple = setting(
            DEFAULT_LANGUAGES, "languages, one class each: comma list of codes or 'all' ("
            + ", ".join(LANGUAGES) + ")", _check_codes, _to_codes)
        train_per_language: int = setting(240, "training sentences per language",
                                          int_at_least(2))
        test_per_language: int = setting(60, "test sentences per language", int_at_least(1))
        public_per_language: int = setting(
            30, "sentences per language in the server's own public set (0: carve "
            "public_fraction out of the training pool instead)", int_at_least(0))
        words: int = setting(6, "typical words per sentence (Faker varies it by up to 40%)",
                             int_at_least(1))
        max_bytes: int = setting(128, "bytes per encoded sentence (longer ones are cut at a "
                                 "character boundary)", int_at_least(8))
        data_seed: int = setting(0, "seed of the generated sentences (independent of the "
                                 "run's seed)", int_at_least(0))

    def build(self, spec: StreamSpec) -> FederatedStream:
        import numpy as np

        from fclkit.partition import class_incremental_stream
        from fclkit.stream import PublicSet
        from fclkit.text import encode_texts, text_input_spec

        o = self.options
        pools = self.sentences()
        enc = {split: encode_texts([s for sents in pools[split] for s in sents], o.max_bytes)
               for split in pools}
        labels = {split: np.repeat(np.arange(len(o.languages)),
                                   [len(s) for s in pools[split]]) for split in pools}
        public = enc["public"] if o.public_per_language > 0 else None
        stream = class_incremental_stream(
            enc["train"], labels["train"], enc["test"], labels["test"], spec,
            input_spec=text_input_spec(o.max_bytes), public=public,
            class_names=self.class_names())
        if public is not None:  # keep the public labels for analysis (fusion must not use them)
            import torch

            stream = attrs.evolve(stream, public=PublicSet(
                x=stream.public.x, y=torch.as_tensor(labels["public"])))
        return stream

    def class_names(self) -> tuple[str, ...]:
        """The classes' names, in option order (subclasses with other languages override)."""
        return tuple(LANGUAGES[c][1] for c in self.options.languages)

    def sentences(self) -> dict[str, list[list[str]]]:
        """The generated sentences: split -> one list per language (in option order)."""
        try:
            from faker import Faker
        except ImportError:  # pragma: no cover - faker is a dependency
            raise BenchmarkUnavailableError(
                "benchmark 'langid' needs the package faker", hint="pip install faker") from None
        from fclkit.text import truncate_utf8

        o = self.options
        sizes = {"train": o.train_per_language, "test": o.test_per_language,
                 "public": o.public_per_language}
        seen: set[bytes] = set()
        pools: dict[str, list[list[str]]] = {split: [] for split in sizes}
        for code in o.languages:
            fake = Faker(LANGUAGES[code][0])
            fake.seed_instance(_language_seed(o.data_seed, code))
            for split, n in sizes.items():
                out: list[str] = []
                tries = 0
                while len(out) < n:
                    sentence = fake.sentence(nb_words=o.words)
                    tries += 1
                    key = truncate_utf8(sentence.replace("\x00", "").encode("utf-8"),
                                        o.max_bytes)  # distinct as encoded rows
                    if key not in seen:
                        seen.add(key)
                        out.append(sentence)
                    elif tries > _MAX_TRIES_PER_SENTENCE * n:
                        raise ConfigError(
                            "benchmark_options", {"words": o.words},
                            f"cannot generate {n} distinct {split} sentences of "
                            f"{o.words} words in {LANGUAGES[code][1]}; use more words")
                pools[split].append(out)
        return pools
