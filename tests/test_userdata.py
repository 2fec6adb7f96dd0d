"""The user-data benchmarks (imagefolder, text-file, hf-dataset) on data made here, offline."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from fclkit import testing
from fclkit.cli import app
from fclkit.errors import BenchmarkUnavailableError, ConfigError
from fclkit.plugins import build_registry

pytestmark = pytest.mark.usefixtures("one_thread")

runner = CliRunner()
REGISTRY = build_registry()
COLOURS = [(230, 30, 30), (30, 200, 40), (40, 60, 230), (240, 220, 30)]
VOCAB = {
    "sport": "goal match team score player coach league stadium referee ball",
    "food": "bread cheese soup garlic pepper butter noodle onion salad bake",
    "music": "guitar piano melody chord rhythm drum violin song tempo choir",
    "space": "planet orbit rocket comet galaxy star moon nebula asteroid telescope",
}


def _image(colour, k, size=16):
    """A noisy image of one colour with a stripe pattern of its class."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(k)
    arr = np.clip(np.asarray(colour)[None, None, :] + rng.normal(0, 20, (size, size, 3)),
                  0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def make_image_folder(root, per_class=20):
    for c, colour in enumerate(COLOURS):
        folder = root / f"class_{'abcd'[c]}"
        folder.mkdir(parents=True)
        for k in range(per_class):
            _image(colour, 100 * c + k).save(folder / f"{k:03d}.{'png' if k % 2 else 'jpg'}")
    return root


def sentences(per_class=30, seed=0):
    import random

    rng = random.Random(seed)
    rows = []
    for label, words in VOCAB.items():
        words = words.split()
        rows += [{"text": " ".join(rng.choice(words) for _ in range(6)), "label": label}
                 for _ in range(per_class)]
    return rows


def run_cli(benchmark, out, *opts, extra=()):
    args = ["run", "--benchmark", benchmark]
    for opt in opts:
        args += ["--benchmark-opt", opt]
    args += ["--clients", "2", "--tasks", "2", "--rounds", "1", "--epochs", "1", "--threads",
             "1", "-q", "--loggers", "none", "--fusion", "fedavg", "--output", str(out),
             "--name", "r", *extra]
    return runner.invoke(app, args, env={"COLUMNS": "200"})


def first_task_accuracy(out):
    metrics = json.loads((out / "r" / "metrics.json").read_text())
    assert metrics["complete"] and metrics["tasks"] == 2
    return [per["small"]["accuracy_matrix"][0][0] for per in metrics["per_client"].values()]


def test_three_benchmarks_are_registered():
    for name in ("imagefolder", "text-file", "hf-dataset"):
        entry = REGISTRY.get("benchmark", name)
        assert entry.cls.default_client_model in REGISTRY.names("client_model")
        assert entry.cls.default_foundation_model in REGISTRY.names("foundation_model")


# ------------------------------------------------------------------ imagefolder


def test_imagefolder_pool(tmp_path):
    from fclkit_builtins.userdata.imagefolder import ImageFolderBenchmark

    make_image_folder(tmp_path / "imgs", per_class=6)
    (tmp_path / "imgs" / ".hidden").mkdir()
    pool = ImageFolderBenchmark(ImageFolderBenchmark.Options(path=str(tmp_path / "imgs"))
                                ).load_pool()
    assert tuple(pool.x.shape) == (24, 3, 32, 32) and pool.input_spec.shape == (3, 32, 32)
    assert str(pool.x.dtype) == "torch.uint8"  # bytes: models read x / 255
    assert pool.class_names == ("class_a", "class_b", "class_c", "class_d")
    grey = ImageFolderBenchmark(ImageFolderBenchmark.Options(
        path=str(tmp_path / "imgs"), channels=1, image_size=8, max_per_class=3)).load_pool()
    assert tuple(grey.x.shape) == (12, 1, 8, 8)


def test_imagefolder_of_grey_images_has_one_channel(tmp_path):
    from PIL import Image

    from fclkit_builtins.userdata.imagefolder import ImageFolderBenchmark

    for c in range(2):
        (tmp_path / str(c)).mkdir()
        for k in range(3):
            Image.new("L", (10, 12), 40 + 150 * c).save(tmp_path / str(c) / f"{k}.png")
    pool = ImageFolderBenchmark(ImageFolderBenchmark.Options(path=str(tmp_path))).load_pool()
    assert pool.input_spec.shape == (1, 32, 32)


def test_imagefolder_contract(tmp_path):
    make_image_folder(tmp_path / "imgs", per_class=8)
    testing.check_benchmark(REGISTRY.get("benchmark", "imagefolder").cls,
                            {"path": str(tmp_path / "imgs"), "image_size": 8})


def test_imagefolder_runs_end_to_end(tmp_path):
    make_image_folder(tmp_path / "imgs")
    res = run_cli("imagefolder", tmp_path / "runs", f"path={tmp_path / 'imgs'}",
                  "image_size=16")
    assert res.exit_code == 0, res.output
    assert min(first_task_accuracy(tmp_path / "runs")) > 0.5  # 2 classes per task: chance 0.5


def test_a_broken_image_is_named(tmp_path):
    make_image_folder(tmp_path / "imgs", per_class=3)
    (tmp_path / "imgs" / "class_a" / "broken.png").write_bytes(b"not a png")
    res = run_cli("imagefolder", tmp_path / "runs", f"path={tmp_path / 'imgs'}")
    assert res.exit_code == 1 and "broken.png" in res.output, res.output


# ------------------------------------------------------------------ text-file


def write_csv(path, rows, text="text", label="label"):
    import csv

    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=[text, label])
        writer.writeheader()
        writer.writerows({text: r["text"], label: r["label"]} for r in rows)
    return path


def test_text_file_reads_csv_and_jsonl_alike(tmp_path):
    from fclkit_builtins.userdata.textfile import TextFileBenchmark

    rows = sentences(per_class=5)
    csv_path = write_csv(tmp_path / "d.csv", rows, text="sentence", label="topic")
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("".join(json.dumps({"sentence": r["text"], "topic": r["label"]}) + "\n"
                             for r in rows))
    pools = [TextFileBenchmark(TextFileBenchmark.Options(
        path=str(p), text_column="sentence", label_column="topic", max_length=64)).load_pool()
        for p in (csv_path, jsonl)]
    assert pools[0].class_names == ("food", "music", "space", "sport")  # sorted
    assert pools[0].input_spec == pools[1].input_spec and pools[0].input_spec.modality == "text"
    assert (pools[0].x == pools[1].x).all() and (pools[0].y == pools[1].y).all()
    from fclkit.text import decode_texts

    assert decode_texts(pools[0].x[:1]) == [rows[0]["text"]]


def test_text_file_numeric_labels_sort_numerically(tmp_path):
    from fclkit_builtins.userdata.textfile import TextFileBenchmark

    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"text": f"t{i}", "label": [10, 2][i % 2]} for i in range(8)]))
    pool = TextFileBenchmark(TextFileBenchmark.Options(path=str(path))).load_pool()
    assert pool.class_names == ("2", "10") and pool.y[0] == 1


def test_text_file_contract(tmp_path):
    path = write_csv(tmp_path / "d.csv", sentences(per_class=10))
    testing.check_benchmark(REGISTRY.get("benchmark", "text-file").cls, {"path": str(path)})


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_text_file_runs_end_to_end(tmp_path, fmt):
    rows = sentences(per_class=40)
    if fmt == "csv":
        path = write_csv(tmp_path / "d.csv", rows, text="sentence")
    else:
        path = tmp_path / "d.jsonl"
        path.write_text("".join(json.dumps({"sentence": r["text"], "label": r["label"]})
                                + "\n" for r in rows))
    res = run_cli("text-file", tmp_path / "runs", f"path={path}", "text_column=sentence",
                  "max_length=64", extra=["--lr", "0.05"])
    assert res.exit_code == 0, res.output
    assert min(first_task_accuracy(tmp_path / "runs")) > 0.5  # 2 classes per task: chance 0.5


def test_a_missing_column_lists_the_columns(tmp_path):
    path = write_csv(tmp_path / "d.csv", sentences(per_class=3))
    res = run_cli("text-file", tmp_path / "runs", f"path={path}", "text_column=body")
    assert res.exit_code == 1
    assert "benchmark_options.text_column = 'body'" in res.output
    assert "its columns: text, label" in res.output


# ------------------------------------------------------------------ the path option


@pytest.mark.parametrize("name", ["imagefolder", "text-file", "hf-dataset"])
def test_missing_path_is_one_line(tmp_path, name):
    if name == "hf-dataset":
        pytest.importorskip("datasets")
    res = run_cli(name, tmp_path / "runs")
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 1 and lines[0].startswith("error: invalid benchmark_options.path")
    assert "needs the option path" in lines[0] and len(lines) <= 2, res.output
    res = run_cli(name, tmp_path / "runs", f"path={tmp_path / 'nothing-here'}")
    assert res.exit_code == 1 and "no such file or folder" in res.output, res.output


def test_a_run_fails_before_training_without_a_path():
    from fclkit_builtins.userdata.textfile import TextFileBenchmark

    with pytest.raises(ConfigError, match="needs the option path"):
        TextFileBenchmark().load_pool()


# ------------------------------------------------------------------ hf-dataset


def make_hf_images(path, per_class=20):
    datasets = pytest.importorskip("datasets")
    images, labels = [], []
    for c, colour in enumerate(COLOURS):
        for k in range(per_class):
            images.append(_image(colour, 100 * c + k))
            labels.append(c)
    features = datasets.Features({"img": datasets.Image(),
                                  "label": datasets.ClassLabel(names=list("wxyz"))})
    ds = datasets.Dataset.from_dict({"img": images, "label": labels}, features=features)
    parts = ds.train_test_split(test_size=0.25, seed=0, stratify_by_column="label")
    parts.save_to_disk(str(path))
    return path


def test_hf_dataset_from_disk_runs_end_to_end(tmp_path):
    path = make_hf_images(tmp_path / "ds")
    res = run_cli("hf-dataset", tmp_path / "runs", f"path={path}", "image_size=16")
    assert res.exit_code == 0, res.output
    assert min(first_task_accuracy(tmp_path / "runs")) > 0.5


def test_hf_dataset_uses_its_test_split_and_a_public_split(tmp_path):
    pytest.importorskip("datasets")
    from fclkit.interfaces import StreamSpec
    from fclkit_builtins.userdata.hf_dataset import HFDatasetBenchmark

    path = make_hf_images(tmp_path / "ds", per_class=8)
    spec = StreamSpec(num_clients=2, num_tasks=2, seed=0, partition="iid",
                      dirichlet_alpha=1.0, public_fraction=0.0)
    stream = HFDatasetBenchmark(HFDatasetBenchmark.Options(path=str(path), image_size=8)
                                ).build(spec)
    assert stream.class_names == ("w", "x", "y", "z") and stream.input_spec.shape == (3, 8, 8)
    assert sum(len(t.y_test) for t in stream.clients[0].tasks) == 8  # the test split: 25 %
    stream = HFDatasetBenchmark(HFDatasetBenchmark.Options(
        path=str(path), image_size=8, test_split="", public_split="test")).build(spec)
    assert len(stream.public.x) == 8 and sorted(stream.public.y.tolist()) == [0, 0, 1, 1, 2, 2,
                                                                             3, 3]


def test_hf_dataset_of_texts_and_local_csv(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = sentences(per_class=10)
    ds = datasets.Dataset.from_list(rows)
    ds.save_to_disk(str(tmp_path / "text-ds"))
    cls = REGISTRY.get("benchmark", "hf-dataset").cls
    testing.check_benchmark(cls, {"path": str(tmp_path / "text-ds"), "max_length": 64})
    pool = cls(cls.Options(path=str(tmp_path / "text-ds"))).load_pool()
    assert pool.input_spec.modality == "text" and pool.class_names[0] == "food"
    csv_path = write_csv(tmp_path / "d.csv", rows)
    testing.check_benchmark(cls, {"path": str(csv_path)})


def test_hf_dataset_with_multi_label_rows_says_one_class_per_example(tmp_path):
    datasets = pytest.importorskip("datasets")
    from fclkit.errors import FclkitError

    rows = [{"text": r["text"], "tags": [r["label"], "extra"]} for r in sentences(10)]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "multi"))
    cls = REGISTRY.get("benchmark", "hf-dataset").cls
    with pytest.raises(FclkitError, match="one class per example") as info:
        cls(cls.Options(path=str(tmp_path / "multi"), label_column="tags")).load_pool()
    assert "a label is a list" in str(info.value) and "label_column" in info.value.hint


def test_hf_hub_id_offline_fails_at_once_in_one_line(tmp_path):
    pytest.importorskip("datasets")
    from fclkit import network
    from fclkit_builtins.userdata.hf_dataset import HFDatasetBenchmark, hub_endpoint

    if network.reachable(hub_endpoint(), 2.0):
        pytest.skip("the Hugging Face hub is reachable here")
    start = time.monotonic()
    with pytest.raises(BenchmarkUnavailableError, match="did not answer"):
        HFDatasetBenchmark(HFDatasetBenchmark.Options(path="axiong/imagenet-r")).load_splits()
    assert time.monotonic() - start < 5
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "fclkit.cli", "run", "--benchmark", "hf-dataset",
         "--benchmark-opt", "path=axiong/imagenet-r", "--fusion", "fedavg", "-q",
         "--loggers", "none", "--output", str(tmp_path)],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("error: benchmark 'hf-dataset': 'axiong/imagenet-r' is not a "
                               "local path"), proc.stderr
    assert len(lines) == 2 and lines[1].startswith("hint:"), proc.stderr


def test_without_datasets_hf_dataset_says_what_to_install(monkeypatch, tmp_path):
    from fclkit_builtins.userdata import hf_dataset

    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` fails
    with pytest.raises(BenchmarkUnavailableError, match=r'pip install "fclkit\[datasets\]"'):
        hf_dataset.HFDatasetBenchmark(hf_dataset.HFDatasetBenchmark.Options(path="x")
                                      ).load_splits()
    res = run_cli("hf-dataset", tmp_path / "runs", "path=x")
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 1 and len(lines) == 1, res.output
    assert lines[0].endswith('pip install "fclkit[datasets]"'), res.output
