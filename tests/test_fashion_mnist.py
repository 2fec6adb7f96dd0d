"""``split-fmnist`` offline: Debian's ``dataset-fashion-mnist``, ``data_dir``, the fixed split,
``train_per_class``, and the one-line message when the files are absent.

The tests marked ``needs_debian_files`` read the real 70,000 images and skip where
``/usr/share/datasets/fashion-mnist`` is absent (``apt-get install dataset-fashion-mnist``);
the others write tiny idx files of their own.
"""

from __future__ import annotations

import gzip
import struct
import time

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fclkit.cli import app
from fclkit.config import build_options
from fclkit.errors import BenchmarkUnavailableError, ConfigError
from fclkit.interfaces import StreamSpec
from fclkit_builtins.avalanche import benchmarks
from fclkit_builtins.avalanche import fashion_mnist as fmnist
from fclkit_builtins.avalanche.benchmarks import SplitFMNIST

pytestmark = pytest.mark.usefixtures("one_thread")

needs_debian_files = pytest.mark.skipif(
    fmnist.find_folder([fmnist.DEBIAN_FOLDER]) is None,
    reason=f"no Fashion-MNIST in {fmnist.DEBIAN_FOLDER} (apt-get install dataset-fashion-mnist)")


def spec(seed=0, tasks=5, clients=2):
    return StreamSpec(num_clients=clients, num_tasks=tasks, seed=seed, partition="iid",
                      dirichlet_alpha=0.5, public_fraction=0.1)


def bench(**options):
    return SplitFMNIST(SplitFMNIST.Options(**options))


def counts(stream):
    """(training images incl. the public set, test images) of a stream."""
    n_train = sum(t.num_train for c in stream.clients for t in c.tasks) + (
        len(stream.public.x) if stream.public is not None else 0)
    return n_train, sum(len(t.y_test) for t in stream.clients[0].tasks)


def write_idx(path, array, gz):
    array = np.asarray(array, dtype=np.uint8)
    data = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape) + array.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


def write_fake(folder, n_train=300, n_test=100, gz=True):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, gz)
    return folder


@pytest.fixture
def offline(monkeypatch):
    """No network: a probe of the download server finds nothing (and is recorded)."""
    probed = []

    def unreachable(url, timeout):
        probed.append(url)
        return False

    monkeypatch.setattr(benchmarks, "server_reachable", unreachable)
    return probed


def test_defaults_are_efficientnet_lite_and_cnn():
    assert SplitFMNIST.default_foundation_model == "efficientnet-lite"
    assert SplitFMNIST.default_client_model == "cnn"
    options = SplitFMNIST.Options()
    assert (options.train_per_class, options.test_fraction, options.data_dir) == (0, 0.0, "")


# ------------------------------------------------------------------ absent files


def test_absent_data_dir_is_one_line_saying_how_to_get_the_files(tmp_path, offline):
    start = time.monotonic()
    with pytest.raises(BenchmarkUnavailableError) as err:
        bench(data_dir=str(tmp_path)).build(spec())
    assert time.monotonic() - start < 2.0
    message = str(err.value)
    assert "\n" not in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert str(tmp_path) in message and "internet" in message
    assert "data_dir" in err.value.hint
    assert offline == []  # a data_dir is only looked at: no download, no probe


def test_absent_everywhere_and_offline_probes_once_and_says_apt_get(tmp_path, offline):
    with pytest.raises(BenchmarkUnavailableError) as err:
        bench(root=str(tmp_path), download_timeout=1.0).build(spec())
    message = str(err.value)
    assert "\n" not in message and "apt-get install dataset-fashion-mnist" in message
    assert "could not be reached" in message and str(tmp_path) in message
    assert len(offline) == 1


def test_cli_prints_the_one_line(tmp_path, offline):
    result = CliRunner().invoke(app, [
        "run", "--benchmark", "split-fmnist", "--benchmark-opt", f"data_dir={tmp_path}",
        "-q", "--loggers", "none", "--output", str(tmp_path / "runs")])
    assert result.exit_code == 1
    error = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "apt-get install dataset-fashion-mnist" in error[0], \
        result.output


def test_damaged_files_are_named(tmp_path):
    folder = write_fake(tmp_path / "fm")
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03abc"))
    with pytest.raises(BenchmarkUnavailableError, match="cannot be read"):
        bench(data_dir=str(folder)).build(spec())


@pytest.mark.parametrize("values, field", [
    ({"train_per_class": -1}, "train_per_class"),
    ({"test_fraction": 1.0}, "test_fraction"),
    ({"test_fraction": -0.1}, "test_fraction"),
    ({"split_seed": -1}, "split_seed"),
])
def test_bad_options_name_the_field(values, field):
    with pytest.raises(ConfigError) as err:
        build_options(SplitFMNIST.Options, values, component="split-fmnist",
                      table="benchmark_options")
    assert err.value.field == f"benchmark_options.{field}"


# ------------------------------------------------------------------ where files are found


@pytest.mark.parametrize("layout, gz", [("", True), ("", False), ("raw", True),
                                        ("FashionMNIST/raw", False)])
def test_data_dir_reads_gzipped_or_plain_idx_files(tmp_path, layout, gz, offline):
    write_fake(tmp_path / layout if layout else tmp_path, gz=gz)
    stream = bench(data_dir=str(tmp_path)).build(spec())
    assert counts(stream) == (300, 100)
    x = stream.clients[0].tasks[0].x_train
    assert x.dtype == torch.uint8 and tuple(x.shape[1:]) == (1, 28, 28)  # models read x / 255
    assert stream.class_names[0] == "T-shirt/top" and stream.num_classes == 10
    assert offline == []


def test_without_options_the_debian_folder_is_found(tmp_path, monkeypatch, offline):
    """No option set: Avalanche's default folder (empty here), then the Debian folder."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(fmnist, "DEBIAN_FOLDER", write_fake(tmp_path / "debian"))
    benchmark = bench()
    assert benchmark.candidate_folders() == [
        tmp_path / "home" / ".avalanche" / "data" / "fashionmnist", tmp_path / "debian"]
    assert counts(benchmark.build(spec())) == (300, 100)
    assert offline == []


def test_train_per_class_and_test_fraction_on_small_files(tmp_path):
    write_fake(tmp_path, n_train=300, n_test=100)
    capped = bench(data_dir=str(tmp_path), train_per_class=7).build(spec())
    assert counts(capped) == (70, 100)  # the test split is never capped
    pooled = bench(data_dir=str(tmp_path), test_fraction=0.25).build(spec())
    assert counts(pooled) == (300, 100)  # 25% of each class of all 400
    other = bench(data_dir=str(tmp_path), test_fraction=0.25, split_seed=1).build(spec())
    first = torch.cat([t.x_test for t in pooled.clients[0].tasks]).sum()
    assert float(first) != float(torch.cat([t.x_test for t in other.clients[0].tasks]).sum())


# ------------------------------------------------------------------ the real 70,000 images


@needs_debian_files
def test_debian_package_gives_the_official_split(offline):
    stream = bench(train_per_class=50).build(spec())
    assert counts(stream) == (500, 10_000)
    assert stream.num_classes == 10 and stream.input_spec.shape == (1, 28, 28)
    labels = torch.cat([t.y_train for c in stream.clients for t in c.tasks] + [stream.public.y])
    assert torch.bincount(labels, minlength=10).tolist() == [50] * 10
    assert offline == []


@needs_debian_files
def test_the_split_is_fixed_whatever_the_run_seed():
    def kept(seed):
        stream = bench(train_per_class=20).build(spec(seed=seed))
        x = torch.cat([t.x_train for c in stream.clients for t in c.tasks] + [stream.public.x])
        return torch.sort(x.flatten(1).sum(1)).values

    assert torch.equal(kept(0), kept(3))


@needs_debian_files
def test_pooled_split_keeps_test_fraction_of_all_70000():
    stream = bench(train_per_class=10, test_fraction=0.2).build(spec(tasks=2))
    assert counts(stream) == (100, 14_000)
