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
from fclkit.config import boolean, positive_float, setting
from fclkit.errors import BenchmarkUnavailableError
from fclkit.interfaces import Benchmark, StreamSpec
from fclkit.stream import FederatedStream, InputSpec


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
        x = x.contiguous().float().div_(255.0)
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
    name = "split-fmnist"
    description = "Fashion-MNIST (10 classes) split into tasks (as Avalanche SplitFMNIST)"
    torchvision_class = "FashionMNIST"
    avalanche_name = "fashionmnist"
    files_folder = "FashionMNIST/raw"
    input_shape = (1, 28, 28)


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
