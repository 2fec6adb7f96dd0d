"""Avalanche's classic split benchmarks as fclkit benchmarks.

``split-mnist``, ``split-fmnist``, ``split-cifar10`` and ``split-cifar100`` read
the same files as Avalanche's ``SplitMNIST``/``SplitFMNIST``/``SplitCIFAR10``/
``SplitCIFAR100`` (torchvision's dataset loaders, in Avalanche's default dataset
folder ``~/.avalanche/data/<name>`` unless the option ``root`` says otherwise),
and cut them into a federated class-incremental stream with
:func:`fclkit.partition.class_incremental_stream`, like every fclkit benchmark.

Offline behaviour: the local files are checked first. Only when they are
missing (and ``download`` is on) is the download server probed, with a short
timeout (``download_timeout``); when it cannot be reached the benchmark fails at
once with :class:`fclkit.errors.BenchmarkUnavailableError`, saying where the
files would go and that the option ``root`` points at a local copy.

``split-fmnist`` also reads Debian's ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist``) and has the options ``data_dir``,
``train_per_class``, ``test_fraction`` and ``split_seed`` (:class:`SplitFMNIST`).

Importing this module is light: torch and torchvision load in :meth:`build`.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlparse

import attrs

from fclkit import network
from fclkit.config import boolean, float_in, int_at_least, positive_float, setting
from fclkit.errors import BenchmarkUnavailableError
from fclkit.interfaces import Benchmark, StreamSpec
from fclkit.stream import FederatedStream, InputSpec

from . import fashion_mnist as fmnist


def avalanche_dataset_location(name: str) -> Path:
    """Avalanche's default folder of a dataset (``dataset_location`` in
    ``~/.avalanche/config.json``, else ``~/.avalanche/data``), without importing Avalanche."""
    base = "~/.avalanche/data"
    config = Path(os.path.expanduser("~/.avalanche/config.json"))
    try:
        base = json.loads(config.read_text(encoding="utf-8")).get("dataset_location", base)
    except (OSError, ValueError, AttributeError):
        pass
    return Path(os.path.expanduser(str(base))) / name


server_reachable = network.reachable  # kept under this name for callers and tests


class TorchvisionSplitBenchmark(Benchmark):
    """A torchvision image-classification set split into class-incremental tasks."""

    #: torchvision.datasets class name
    torchvision_class: ClassVar[str]
    #: folder name under Avalanche's dataset location (as Avalanche's own loaders use)
    avalanche_name: ClassVar[str]
    #: where torchvision puts the files, relative to ``root``
    files_folder: ClassVar[str]
    input_shape: ClassVar[tuple[int, ...]]
    default_client_model = "mlp"

    @attrs.frozen
    class Options:
        root: str = setting(
            "", "folder holding the dataset files ('' = Avalanche's default, "
            "~/.avalanche/data/<dataset>)", None, str)
        download: bool = setting(
            True, "download the files when they are not in `root` (needs internet)", boolean)
        download_timeout: float = setting(
            3.0, "seconds to wait for the download server before giving up", positive_float)

    # ----------------------------------------------------------------- loading

    @property
    def root(self) -> Path:
        root = self.options.root
        return Path(os.path.expanduser(root)) if root else avalanche_dataset_location(
            self.avalanche_name)

    def _dataset_class(self) -> Any:
        import torchvision.datasets

        return getattr(torchvision.datasets, self.torchvision_class)

    def _download_url(self, cls: Any) -> str:
        mirrors = getattr(cls, "mirrors", None)
        return mirrors[0] if mirrors else cls.url

    def _unavailable(self, why: str) -> BenchmarkUnavailableError:
        where = self.root / self.files_folder
        return BenchmarkUnavailableError(
            f"benchmark {self.name!r}: the {self.torchvision_class} data is not available "
            f"offline: it is not in {where} (where it would be downloaded to) and {why}",
            hint=f"copy the {self.torchvision_class} files into {where} (or run once where "
            "there is internet), or set the benchmark option `root` to a local dataset folder "
            "([benchmark_options] root = \"/path/to/data\")")

    def load(self) -> tuple[Any, Any]:
        """The (train, test) torchvision datasets, downloading them only if missing."""
        cls = self._dataset_class()
        root = str(self.root)
        try:
            return cls(root, train=True, download=False), cls(root, train=False, download=False)
        except RuntimeError:
            pass  # not there (or damaged): maybe download
        if not self.options.download:
            raise self._unavailable("downloading is switched off (option `download`)")
        url = self._download_url(cls)
        timeout = float(self.options.download_timeout)
        if not server_reachable(url, timeout):
            raise self._unavailable(
                f"its server {urlparse(url).hostname} could not be reached (waited at most "
                f"{timeout:g} s, option `download_timeout`; no internet?)")
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(max(timeout, 10.0))
        try:
            return cls(root, train=True, download=True), cls(root, train=False, download=True)
        except Exception as exc:  # network errors, bad checksums, full disk, ...
            raise self._unavailable(f"downloading it failed ({type(exc).__name__}: {exc})"
                                    ) from None
        finally:
            socket.setdefaulttimeout(previous)

    @staticmethod
    def _tensors(dataset: Any) -> tuple[Any, Any]:
        import numpy as np
        import torch

        data = dataset.data
        if isinstance(data, np.ndarray):  # CIFAR: (N, H, W, C) uint8
            x = torch.from_numpy(data).permute(0, 3, 1, 2)
        else:  # MNIST family: (N, H, W) uint8 tensor
            x = torch.as_tensor(data).unsqueeze(1)
        x = x.contiguous()  # uint8: models read it as x / 255 (fclkit.stream.images_as_float)
        y = torch.as_tensor(np.asarray(dataset.targets), dtype=torch.long)
        return x, y

    def build(self, spec: StreamSpec) -> FederatedStream:
        from fclkit.partition import class_incremental_stream

        train, test = self.load()
        x_train, y_train = self._tensors(train)
        x_test, y_test = self._tensors(test)
        return class_incremental_stream(
            x_train, y_train, x_test, y_test, spec,
            input_spec=InputSpec("image", self.input_shape),
            class_names=tuple(str(c) for c in getattr(train, "classes", ())))


class SplitMNIST(TorchvisionSplitBenchmark):
    name = "split-mnist"
    description = "MNIST handwritten digits (10 classes) split into tasks (as Avalanche SplitMNIST)"
    torchvision_class = "MNIST"
    avalanche_name = "mnist"
    files_folder = "MNIST/raw"
    input_shape = (1, 28, 28)


class SplitFMNIST(TorchvisionSplitBenchmark):
    """Fashion-MNIST, readable offline from Debian's ``dataset-fashion-mnist``.

    Where the four idx files are looked for, before any download: the option
    ``data_dir`` alone when it is set (never downloaded into); else the option
    ``root`` alone when it is set; else Avalanche's default folder
    (``~/.avalanche/data/fashionmnist``) and then
    ``/usr/share/datasets/fashion-mnist`` (the Debian package). A folder counts
    with the files in it, in its ``raw/`` or in its ``FashionMNIST/raw/``,
    gzipped or not. Only when none has them (and ``download`` is on, and the
    server answers) are they downloaded into ``root``.

    The split is fixed, independent of the run's seed: the official 60,000
    training / 10,000 test images (``test_fraction = 0``, the default), or all
    70,000 pooled and ``test_fraction`` of every class kept for testing (drawn
    under ``split_seed``). ``train_per_class`` then keeps at most that many
    training images of every class (drawn under ``split_seed``; the test split is
    never capped). Images stay ``uint8`` in the stream (a quarter of their float32
    memory; every model reads them as float32 in ``[0, 1]``, a batch at a time).
    """

    name = "split-fmnist"
    description = ("Fashion-MNIST (10 classes, 70,000 28x28 images) split into tasks (as "
                   "Avalanche SplitFMNIST); offline from apt's dataset-fashion-mnist")
    torchvision_class = "FashionMNIST"
    avalanche_name = "fashionmnist"
    files_folder = "FashionMNIST/raw"
    input_shape = (1, 28, 28)
    default_foundation_model = "efficientnet-lite"
    default_client_model = "cnn"

    @attrs.frozen
    class Options(TorchvisionSplitBenchmark.Options):
        data_dir: str = setting(
            "", "folder holding the four Fashion-MNIST idx files (.gz or not), the only "
            "place looked at when set ('' = root, else Avalanche's default folder, then "
            "/usr/share/datasets/fashion-mnist)", None, str)
        train_per_class: int = setting(
            0, "training images kept per class (0 = all); the test split is not capped",
            int_at_least(0))
        test_fraction: float = setting(
            0.0, "0 = the official 10,000 test images; else the fraction of each class "
            "of all 70,000 kept for testing", float_in(0.0, 1.0, high_open=True))
        split_seed: int = setting(
            0, "seed of the test_fraction split and the train_per_class draw "
            "(independent of the run's seed)", int_at_least(0))

    def candidate_folders(self) -> list[Path]:
        """Where the files are looked for, in order (see the class docstring)."""
        if self.options.data_dir:
            return [Path(os.path.expanduser(self.options.data_dir))]
        if self.options.root:
            return [self.root]
        return [self.root, fmnist.DEBIAN_FOLDER]

    def _missing(self, why: str) -> BenchmarkUnavailableError:
        places = ", ".join(str(p) for p in self.candidate_folders())
        return BenchmarkUnavailableError(
            f"benchmark {self.name!r}: the Fashion-MNIST data is not available offline: it is "
            f"not in {places} and {why}; get it with {fmnist.INSTALL_HINT} (Debian/Ubuntu: "
            f"found in {fmnist.DEBIAN_FOLDER} without any option) or run once where there is "
            "internet",
            hint="or point the benchmark option `data_dir` at a folder holding the four idx "
            "files (--benchmark-opt data_dir=/path), or `root` at a torchvision dataset root")

    def load_arrays(self) -> dict[str, tuple[Any, Any]]:
        """``{"train": (images, labels), "test": (images, labels)}``, uint8 numpy arrays."""
        folder = fmnist.find_folder(self.candidate_folders())
        if folder is None:
            if self.options.data_dir:
                raise self._missing("the option `data_dir` is set (nothing is downloaded "
                                    "into it)")
            if not self.options.download:
                raise self._missing("downloading is switched off (option `download`)")
            cls = self._dataset_class()
            url = self._download_url(cls)
            timeout = float(self.options.download_timeout)
            if not server_reachable(url, timeout):
                raise self._missing(
                    f"its server {urlparse(url).hostname} could not be reached (waited at "
                    f"most {timeout:g} s, option `download_timeout`; no internet?)")
            previous = socket.getdefaulttimeout()
            socket.setdefaulttimeout(max(timeout, 10.0))
            try:
                cls(str(self.root), train=True, download=True)
                cls(str(self.root), train=False, download=True)
            except Exception as exc:  # network errors, bad checksums, full disk, ...
                raise self._missing(f"downloading it failed ({type(exc).__name__}: {exc})"
                                    ) from None
            finally:
                socket.setdefaulttimeout(previous)
            folder = fmnist.find_folder([self.root])
            if folder is None:
                raise self._missing("the download left no readable files")
        try:
            return fmnist.read_folder(folder)
        except (OSError, ValueError, EOFError) as exc:
            raise BenchmarkUnavailableError(
                f"benchmark {self.name!r}: the Fashion-MNIST files in {folder} cannot be read "
                f"({type(exc).__name__}: {exc})",
                hint=f"reinstall them (`{fmnist.INSTALL_HINT}`) or delete the damaged copy"
                ) from None

    def build(self, spec: StreamSpec) -> FederatedStream:
        import numpy as np
        import torch

        from fclkit.partition import class_incremental_stream, split_public

        data = self.load_arrays()
        (x_train, y_train), (x_test, y_test) = data["train"], data["test"]
        rng = np.random.default_rng(self.options.split_seed)
        if self.options.test_fraction > 0:
            x = np.concatenate([x_train, x_test])
            y = np.concatenate([y_train, y_test])
            train, test = split_public(y, self.options.test_fraction, rng)
            x_train, y_train, x_test, y_test = x[train], y[train], x[test], y[test]
            del x, y
        keep = fmnist.cap_per_class(y_train, int(self.options.train_per_class), rng)
        del data
        stream = class_incremental_stream(
            torch.from_numpy(x_train[keep]).unsqueeze(1),
            torch.from_numpy(y_train[keep].astype(np.int64)),
            torch.from_numpy(np.array(x_test)).unsqueeze(1),
            torch.from_numpy(y_test.astype(np.int64)), spec,
            input_spec=InputSpec("image", self.input_shape), class_names=fmnist.CLASS_NAMES)
        return stream


class SplitCIFAR10(TorchvisionSplitBenchmark):
    name = "split-cifar10"
    description = "CIFAR-10 (10 classes) split into tasks (as Avalanche SplitCIFAR10)"
    torchvision_class = "CIFAR10"
    avalanche_name = "cifar10"
    files_folder = "cifar-10-batches-py"
    input_shape = (3, 32, 32)


class SplitCIFAR100(TorchvisionSplitBenchmark):
    name = "split-cifar100"
    description = "CIFAR-100 (100 classes) split into tasks (as Avalanche SplitCIFAR100)"
    torchvision_class = "CIFAR100"
    avalanche_name = "cifar100"
    files_folder = "cifar-100-python"
    input_shape = (3, 32, 32)


#: every benchmark this plugin registers
BENCHMARKS: tuple[type[TorchvisionSplitBenchmark], ...] = (
    SplitMNIST, SplitFMNIST, SplitCIFAR10, SplitCIFAR100)
