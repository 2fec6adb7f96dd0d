"""Benchmark ``text-file``: your texts and labels from a CSV or JSONL file.

A CSV file has a header row naming its columns; a JSONL file holds one JSON
object per line (a ``.json`` file may also hold one list of objects). The
``text_column`` holds the text, the ``label_column`` its class: strings or
numbers, mapped to class ids in sorted order (numbers numerically, else as
strings), their values becoming the class names. Texts are encoded as UTF-8
bytes (:mod:`fclkit.text`, the encoding of ``langid``), ``max_length`` bytes
per text. With ``domain_column`` and ``--scenario domain``, each value of that
column is one task (sorted, or in ``domain_order``). The shared split and stream
are :class:`fclkit.pool.LabelledPoolBenchmark`'s.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs

from fclkit.config import one_of, setting
from fclkit.errors import ConfigError, FclkitError
from fclkit.pool import LabelledPool, PoolOptions

from .common import (
    UserDataBenchmark,
    a_string,
    check_classes,
    domain_ids,
    domain_order_setting,
    domain_setting,
    label_ids,
    max_length_setting,
    path_setting,
    require_path,
)

FORMATS = ("auto", "csv", "jsonl")
_BY_SUFFIX = {".csv": "csv", ".tsv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl",
              ".json": "jsonl"}


def file_format(path: Path, option: str) -> str:
    if option != "auto":
        return option
    found = _BY_SUFFIX.get(path.suffix.lower())
    if found is None:
        raise ConfigError("benchmark_options.format", option,
                          f"cannot tell the format of {path.name} from its extension (.csv, "
                          ".tsv, .jsonl, .ndjson, .json)",
                          hint="--benchmark-opt format=csv or format=jsonl")
    return found


def read_rows(path: Path, fmt: str, delimiter: str) -> list[dict[str, Any]]:
    """Every row of the file as a dict (column -> value)."""
    text = path.read_text(encoding="utf-8-sig")
    if fmt == "csv":
        import csv
        import io

        sep = delimiter or ("\t" if path.suffix.lower() == ".tsv" else ",")
        try:
            return list(csv.DictReader(io.StringIO(text, newline=""), delimiter=sep))
        except csv.Error as exc:
            raise FclkitError(f"benchmark 'text-file': {path} is not valid CSV: {exc}") from None
    stripped = text.lstrip()
    if stripped.startswith("["):  # a .json file holding one list of objects
        try:
            rows = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise FclkitError(f"benchmark 'text-file': {path} is not valid JSON: {exc}") from None
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise FclkitError(f"benchmark 'text-file': {path} line {number} is not a "
                                  f"JSON object: {exc}") from None
    bad = next((i for i, r in enumerate(rows, 1) if not isinstance(r, dict)), None)
    if bad is not None:
        raise FclkitError(f"benchmark 'text-file': {path}: record {bad} is not a JSON object")
    return rows


class TextFileBenchmark(UserDataBenchmark):
    name = "text-file"
    description = ("your texts: a CSV or JSONL file with a text column and a label column, "
                   "as UTF-8 byte rows; offline")
    default_foundation_model = "hf"
    default_client_model = "text-cnn"

    @attrs.frozen
    class Options(PoolOptions):
        path: str = path_setting("CSV (.csv, .tsv) or JSONL (.jsonl, .ndjson, .json) file")
        format: str = setting("auto", "file format: 'csv', 'jsonl' or 'auto' (from the "
                              "extension)", one_of(*FORMATS))
        text_column: str = setting("text", "column holding the text", a_string)
        label_column: str = setting("label", "column holding the class (strings or numbers, "
                                    "mapped to ids in sorted order)", a_string)
        delimiter: str = setting("", "CSV field separator ('': tab for .tsv, else comma)",
                                 a_string)
        max_length: int = max_length_setting()
        domain_column: str = domain_setting()
        domain_order: str = domain_order_setting()

    def load_pool(self) -> LabelledPool:
        from fclkit.text import encode_texts, text_input_spec

        o = self.options
        path = require_path(self.name, o.path, "a CSV or JSONL file", "data.csv")
        if path.is_dir():
            raise ConfigError("benchmark_options.path", o.path, "must be a file, not a folder",
                              hint="for a folder of images per class use --benchmark "
                              "imagefolder")
        rows = read_rows(path, file_format(path, o.format), o.delimiter)
        if not rows:
            raise FclkitError(f"benchmark 'text-file': {path} holds no rows")
        columns = list(rows[0])
        for option in ("text_column", "label_column", "domain_column"):
            column = getattr(o, option)
            if column and not any(column in r for r in rows[:1]):
                raise ConfigError(f"benchmark_options.{option}", column,
                                  f"{path.name} has no such column; its columns: "
                                  + ", ".join(map(str, columns)),
                                  hint=f"--benchmark-opt {option}=NAME")
        texts: list[str] = []
        values: list[Any] = []
        for number, row in enumerate(rows, 1):
            text, label = row.get(o.text_column), row.get(o.label_column)
            if label is None or (isinstance(label, str) and not label.strip()):
                raise FclkitError(f"benchmark 'text-file': {path}: row {number} has no "
                                  f"{o.label_column!r}")
            if isinstance(label, (list, dict)):
                raise FclkitError(f"benchmark 'text-file': {path}: row {number}: the label "
                                  f"{label!r} is not a string or a number")
            texts.append("" if text is None else str(text))
            values.append(label.strip() if isinstance(label, str) else label)
        y, names, _ = label_ids(values)
        check_classes(self.name, y, names)
        x = encode_texts(texts, o.max_length)
        domains, domain_names = None, ()
        if o.domain_order and not o.domain_column:
            raise ConfigError("benchmark_options.domain_order", o.domain_order,
                              "orders the values of domain_column, which is not set",
                              hint="--benchmark-opt domain_column=NAME")
        if o.domain_column:
            domains, domain_names = domain_ids(self.name, [r.get(o.domain_column)
                                                           for r in rows], o.domain_order)
        return LabelledPool(x, y, text_input_spec(o.max_length), class_names=names,
                            domains=domains, domain_names=domain_names)
