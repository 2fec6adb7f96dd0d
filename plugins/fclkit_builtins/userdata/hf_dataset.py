"""Benchmark ``hf-dataset``: a Hugging Face ``datasets`` data set (needs ``fclkit[datasets]``).

``path`` is, in this order:

1. a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``
   (read with ``datasets.load_from_disk``, offline);
2. a local file or folder, read with the ``builder`` option (``imagefolder``,
   ``csv``, ``json``, ``parquet``, ...); without it a file's builder follows its
   extension and a folder is left to ``datasets.load_dataset`` to recognise;
3. otherwise a hub id (``owner/name``), loaded with ``datasets.load_dataset``.
   The hub is probed first (``hub_timeout`` seconds): with no network the
   benchmark stops at once. With ``HF_HUB_OFFLINE=1`` (or
   ``HF_DATASETS_OFFLINE=1``) set, a copy in the local ``datasets`` cache is used.

The examples are images (``image_column``, by default the first ``Image``
column) or texts (``text_column``), labelled by ``label_column`` (a
``ClassLabel`` keeps its names; other values are mapped in sorted order). The
test split is ``test_split`` when the data set has it, else ``test_fraction``
of ``train_split`` (drawn under ``split_seed``); the server's public set is
``public_split`` when given, else ``public_fraction`` of the training data.
With ``domain_column`` and ``--scenario domain``, each value of that column is one
task (sorted, or in ``domain_order``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import attrs

from fclkit import network
from fclkit.config import positive_float, setting
from fclkit.errors import BenchmarkUnavailableError, ConfigError, FclkitError
from fclkit.interfaces import StreamSpec
from fclkit.pool import LabelledPool, PoolOptions
from fclkit.stream import UNLABELLED, FederatedStream

from .common import (
    UserDataBenchmark,
    a_string,
    channels_setting,
    check_classes,
    domain_ids,
    domain_order_setting,
    domain_setting,
    image_size_setting,
    image_spec,
    images_to_tensor,
    label_ids,
    max_length_setting,
    path_setting,
)

INSTALL = 'pip install "fclkit[datasets]"'
_BUILDER_BY_SUFFIX = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json",
                      ".ndjson": "json", ".parquet": "parquet", ".arrow": "arrow",
                      ".txt": "text"}
_TRUE = {"1", "true", "yes", "on"}


def offline_by_env() -> bool:
    """Whether the environment asks Hugging Face libraries to stay offline."""
    return any(os.environ.get(v, "").strip().lower() in _TRUE
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "").strip() or "https://huggingface.co"


def _looks_like_path(value: str) -> bool:
    """A hub id is ``name`` or ``owner/name``; anything else is meant as a local path."""
    return (value.startswith(("/", ".", "~")) or "\\" in value or value.count("/") > 1
            or Path(value).suffix.lower() in _BUILDER_BY_SUFFIX)


def _saved_to_disk(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


class HFDatasetBenchmark(UserDataBenchmark):
    name = "hf-dataset"
    description = ("a Hugging Face datasets data set: a save_to_disk folder, local files "
                   "(imagefolder/csv/json builders) or a hub id (needs internet); "
                   "images or texts")
    # image data sets (ImageNet-R, CIFAR, your folders); for a text one pass
    # --fm hf --client-models text-cnn
    default_foundation_model = "efficientnet-lite"
    default_client_model = "cnn"

    @attrs.frozen
    class Options(PoolOptions):
        path: str = path_setting("a save_to_disk folder, a local data file or folder, or a "
                                 "hub id (owner/name; needs internet)")
        builder: str = setting("", "datasets builder for a local file or folder: "
                               "'imagefolder', 'csv', 'json', 'parquet', ... ('': load_from_"
                               "disk for a save_to_disk folder, else from the extension)",
                               a_string)
        config_name: str = setting("", "the data set's configuration (load_dataset's name; "
                                   "'': its default)", a_string)
        image_column: str = setting("", "column holding the images ('': the first Image "
                                    "column, if any)", a_string)
        text_column: str = setting("", "column holding the texts, used when there is no "
                                   "image column ('': 'text', else the first string column)",
                                   a_string)
        label_column: str = setting("label", "column holding the class (a ClassLabel keeps "
                                    "its names; other values are mapped in sorted order)",
                                    a_string)
        train_split: str = setting("train", "split the clients' data comes from", a_string)
        test_split: str = setting("test", "split tested on when the data set has it (else, "
                                  "when '' or when it is train_split, test_fraction of "
                                  "train_split is held out)",
                                  a_string)
        public_split: str = setting("", "split that is the server's public set ('': "
                                    "public_fraction of the training data)", a_string)
        channels: int = channels_setting()
        image_size: int = image_size_setting()
        max_length: int = max_length_setting()
        domain_column: str = domain_setting()
        domain_order: str = domain_order_setting()
        hub_timeout: float = setting(3.0, "seconds to wait for the Hugging Face hub before "
                                     "treating the machine as offline", positive_float)

    # ------------------------------------------------------------------ loading

    def load_splits(self) -> Any:
        """The data set as a mapping split name -> ``datasets.Dataset``."""
        try:
            import datasets
        except ImportError:
            raise BenchmarkUnavailableError(
                f"benchmark 'hf-dataset' needs the Hugging Face datasets package: {INSTALL}"
            ) from None
        o = self.options
        value = o.path.strip()
        if not value:
            raise ConfigError("benchmark_options.path", o.path,
                              "benchmark 'hf-dataset' needs the option path: a save_to_disk "
                              "folder, a local data file or folder, or a hub id",
                              hint="--benchmark-opt path=DIR (or path=owner/name)")
        local = Path(value).expanduser()
        if local.exists():
            loaded = self._load_local(local)
        elif _looks_like_path(value):
            raise ConfigError("benchmark_options.path", o.path, "no such file or folder",
                              hint="a hub id is name or owner/name; a local path must exist")
        else:
            loaded = self._load_hub(value)
        if isinstance(loaded, datasets.Dataset):
            return {"train": loaded}
        return dict(loaded)

    def _load_local(self, path: Path) -> Any:
        import datasets

        o = self.options
        try:
            if not o.builder and path.is_dir() and _saved_to_disk(path):
                return datasets.load_from_disk(str(path))
            builder = o.builder or (None if path.is_dir()
                                    else _BUILDER_BY_SUFFIX.get(path.suffix.lower()))
            if builder is None and path.is_file():
                raise ConfigError("benchmark_options.builder", o.builder,
                                  f"cannot tell which builder reads {path.name}",
                                  hint="--benchmark-opt builder=csv (or json, parquet, "
                                  "imagefolder, ...)")
            name = o.config_name or None
            if builder is None:  # a folder: datasets recognises its files
                return datasets.load_dataset(str(path), name)
            if path.is_dir():
                return datasets.load_dataset(builder, name, data_dir=str(path))
            return datasets.load_dataset(builder, name, data_files=str(path))
        except FclkitError:
            raise
        except Exception as exc:
            raise FclkitError(f"benchmark 'hf-dataset': cannot load {path}: "
                              f"{type(exc).__name__}: {exc}") from None

    def _load_hub(self, repo_id: str) -> Any:
        o = self.options
        if not offline_by_env() and not network.reachable(hub_endpoint(), o.hub_timeout):
            raise BenchmarkUnavailableError(
                f"benchmark 'hf-dataset': {repo_id!r} is not a local path, and the Hugging "
                f"Face hub ({hub_endpoint()}) did not answer within {o.hub_timeout:g} s "
                "(no internet?)",
                hint="where there is internet, save it with datasets.load_dataset(...)."
                "save_to_disk(DIR) and pass path=DIR; or set HF_HUB_OFFLINE=1 to use a copy "
                "in the local datasets cache")
        import datasets

        try:
            return datasets.load_dataset(repo_id, o.config_name or None)
        except Exception as exc:
            why = f"{type(exc).__name__}: {exc}".splitlines()[0]
            raise BenchmarkUnavailableError(
                f"benchmark 'hf-dataset': cannot load {repo_id!r} from the hub"
                + (" (offline: HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set)"
                   if offline_by_env() else "") + f": {why}") from None

    # ------------------------------------------------------------------ columns

    def _columns(self, ds: Any) -> tuple[str, str]:
        """(modality, input column) of the train split."""
        import datasets

        o = self.options
        features = ds.features
        names = list(features)
        for option in ("image_column", "text_column", "label_column", "domain_column"):
            column = getattr(o, option)
            if column and column not in features:
                raise ConfigError(f"benchmark_options.{option}", column,
                                  f"split {o.train_split!r} has no such column; its columns: "
                                  + ", ".join(names), hint=f"--benchmark-opt {option}=NAME")
        if o.image_column:
            return "image", o.image_column
        if o.text_column:
            return "text", o.text_column
        images = [n for n in names if isinstance(features[n], datasets.Image)]
        if images:
            return "image", images[0]
        if "text" in features:
            return "text", "text"
        strings = [n for n in names if n not in (o.label_column, o.domain_column)
                   and isinstance(features[n], datasets.Value) and features[n].dtype in (
                       "string", "large_string")]
        if strings:
            return "text", strings[0]
        raise ConfigError("benchmark_options.image_column", "",
                          "found no Image column and no string column; its columns: "
                          + ", ".join(names),
                          hint="--benchmark-opt image_column=NAME or text_column=NAME")

    def _inputs(self, ds: Any, modality: str, column: str, where: str,
                channels: int) -> Any:
        """The inputs of one split: texts encoded, or images at ``channels`` (0: from data)."""
        from fclkit.text import encode_texts

        o = self.options
        if column not in ds.features:
            raise ConfigError("benchmark_options." + ("image_column" if modality == "image"
                                                      else "text_column"), column,
                              f"split {where!r} has no such column")
        if modality == "text":
            texts = ds[column]
            return encode_texts(["" if t is None else str(t) for t in texts], o.max_length)

        def images():
            for i, row in enumerate(ds.select_columns([column])):
                image = row[column]
                if image is None:
                    raise FclkitError(f"benchmark 'hf-dataset': split {where!r} row {i} has "
                                      f"no image in {column!r}")
                yield image

        return images_to_tensor(images(), len(ds), channels, o.image_size,
                                where=lambda i: f"split {where!r} row {i}")

    # ------------------------------------------------------------------ the stream

    def load_pool(self) -> LabelledPool:
        """The training split alone as a pool (:meth:`build` also reads the test and public
        splits)."""
        parts = self._parts()
        return LabelledPool(parts["x"], parts["y"], parts["input_spec"], parts["names"])

    def build(self, spec: StreamSpec) -> FederatedStream:
        p = self._parts()
        return self.stream_from_splits(
            spec, p["x"], p["y"], input_spec=p["input_spec"], class_names=p["names"],
            x_test=p.get("x_test"), y_test=p.get("y_test"), public_x=p.get("public_x"),
            public_y=p.get("public_y"), domains=p.get("domains"),
            domains_test=p.get("domains_test"), domain_names=p.get("domain_names", ()))

    def _parts(self) -> dict[str, Any]:
        splits = self.load_splits()  # first: says what to install when datasets is missing
        import datasets
        import numpy as np

        o = self.options
        known = ", ".join(splits)
        if o.train_split not in splits:
            raise ConfigError("benchmark_options.train_split", o.train_split,
                              f"the data set has no such split; its splits: {known}")
        # the test split is held out of train_split when there is no such split, when it
        # is '' and when it is train_split itself (a data set with one split)
        use_test = (bool(o.test_split) and o.test_split in splits
                    and o.test_split != o.train_split)
        if o.test_split and o.test_split not in splits and o.test_split != "test":
            raise ConfigError("benchmark_options.test_split", o.test_split,
                              f"the data set has no such split; its splits: {known}",
                              hint="test_split='' holds out test_fraction of train_split")
        if o.public_split and o.public_split not in splits:
            raise ConfigError("benchmark_options.public_split", o.public_split,
                              f"the data set has no such split; its splits: {known}")
        if o.public_split and o.public_split in (o.train_split, o.test_split if use_test
                                                  else None):
            raise ConfigError("benchmark_options.public_split", o.public_split,
                              "must differ from train_split and test_split")
        train = splits[o.train_split]
        modality, column = self._columns(train)
        label = train.features[o.label_column]
        class_names = label.names if isinstance(label, datasets.ClassLabel) else None
        used = {"train": train}
        if use_test:
            used["test"] = splits[o.test_split]
        if o.public_split:
            used["public"] = splits[o.public_split]
        raw: dict[str, list[Any]] = {}
        for role, ds in used.items():
            if o.label_column not in ds.features:
                if role == "public":
                    raw[role] = [None] * len(ds)
                    continue
                raise ConfigError("benchmark_options.label_column", o.label_column,
                                  f"split {ds.split or role!r} has no such column")
            values = list(ds[o.label_column])
            missing = [i for i, v in enumerate(values)
                       if v is None or (class_names is not None and v == -1)]
            if missing and role != "public":
                raise FclkitError(
                    f"benchmark 'hf-dataset': {len(missing)} example(s) of split "
                    f"{(o.test_split if role == 'test' else o.train_split)!r} have no label",
                    hint="test_split='' holds out test_fraction of train_split instead"
                    if role == "test" else None)
            raw[role] = values
        labelled = [v for role in ("train", "test") if role in raw for v in raw[role]]
        y_all, names, mapping = label_ids(labelled, names=class_names)
        n_train = len(raw["train"])
        check_classes(self.name, y_all[:n_train], names)
        from fclkit.text import text_input_spec

        first = self._inputs(train, modality, column, o.train_split, o.channels)
        channels = int(first.shape[1]) if modality == "image" else 0
        spec = (image_spec(channels, o.image_size) if modality == "image"
                else text_input_spec(o.max_length))
        parts: dict[str, Any] = {"x": first, "y": y_all[:n_train], "input_spec": spec,
                                 "names": names}
        if use_test:
            parts["x_test"] = self._inputs(used["test"], modality, column, o.test_split,
                                            channels)
            parts["y_test"] = y_all[n_train:]
        if o.domain_order and not o.domain_column:
            raise ConfigError("benchmark_options.domain_order", o.domain_order,
                              "orders the values of domain_column, which is not set",
                              hint="--benchmark-opt domain_column=NAME")
        if o.domain_column:
            values = list(train[o.domain_column])
            test_values: list[Any] = []
            if use_test:
                if o.domain_column not in used["test"].features:
                    raise ConfigError("benchmark_options.domain_column", o.domain_column,
                                      f"split {o.test_split!r} has no such column",
                                      hint="test_split='' holds out test_fraction of "
                                      "train_split instead")
                test_values = list(used["test"][o.domain_column])
            feature = train.features[o.domain_column]
            if isinstance(feature, datasets.ClassLabel):  # domains by their names
                values, test_values = ([None if v is None or v < 0 else feature.names[v]
                                        for v in vs] for vs in (values, test_values))
            ids, parts["domain_names"] = domain_ids(self.name, values + test_values,
                                                    o.domain_order)
            parts["domains"] = ids[:len(values)]
            if use_test:
                parts["domains_test"] = ids[len(values):]
        if o.public_split:
            parts["public_x"] = self._inputs(used["public"], modality, column,
                                              o.public_split, channels)
            parts["public_y"] = np.asarray([mapping.get(v, UNLABELLED) for v in raw["public"]],
                                           dtype=np.int64)
        return parts
