"""Background imports while a run loads its data (fclkit.runtime.preload)."""

from __future__ import annotations

import sys

import pytest

from fclkit.runtime.preload import ENV_SWITCH, BackgroundImports


def _write(tmp_path, name: str, body: str) -> None:
    (tmp_path / f"{name}.py").write_text(body)


@pytest.fixture
def modules_dir(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("fclkit_preload_probe")]:
        del sys.modules[name]


def test_imports_the_modules_in_the_background_and_restores_the_switch_interval(modules_dir):
    _write(modules_dir, "fclkit_preload_probe_a", "import time\ntime.sleep(0.2)\nVALUE = 1\n")
    before = sys.getswitchinterval()
    imports = BackgroundImports(["fclkit_preload_probe_a", "fclkit_preload_probe_a"])
    assert imports.modules == ["fclkit_preload_probe_a"]  # once each
    assert imports.running
    assert sys.getswitchinterval() < before  # the main thread gets the GIL back sooner
    imports.wait()
    assert not imports.running
    assert sys.modules["fclkit_preload_probe_a"].VALUE == 1
    assert sys.getswitchinterval() == before


def test_a_failing_import_is_left_to_the_component_to_report(modules_dir):
    _write(modules_dir, "fclkit_preload_probe_bad", "raise ImportError('needs libfoo')\n")
    _write(modules_dir, "fclkit_preload_probe_after", "VALUE = 2\n")
    imports = BackgroundImports(["fclkit_preload_probe_bad", "fclkit_preload_probe_after"])
    imports.wait()  # nothing raised here, and the next module is still imported
    assert sys.modules["fclkit_preload_probe_after"].VALUE == 2
    assert "fclkit_preload_probe_bad" not in sys.modules
    with pytest.raises(ImportError, match="needs libfoo"):  # where the component imports it
        __import__("fclkit_preload_probe_bad")


def test_switched_off_by_the_environment(modules_dir, monkeypatch):
    _write(modules_dir, "fclkit_preload_probe_off", "VALUE = 3\n")
    monkeypatch.setenv(ENV_SWITCH, "0")
    imports = BackgroundImports(["fclkit_preload_probe_off"])
    assert not imports.running
    imports.wait()
    assert "fclkit_preload_probe_off" not in sys.modules


def test_the_builtin_strategies_name_modules_that_exist():
    import importlib.util

    from fclkit.plugins import build_registry

    registry = build_registry()
    for name in registry.names("strategy"):
        cls = registry.get("strategy", name).cls
        for module in cls.background_imports:
            assert importlib.util.find_spec(module) is not None, (name, module)


@pytest.mark.usefixtures("one_thread")
def test_a_run_gives_the_same_results_with_and_without_background_imports(monkeypatch):
    """The FM's features of the test sets are computed ahead (while the imports run) in
    other batches than the first evaluation's: the results must not change."""
    import fclkit

    config = fclkit.ExperimentConfig(cl="replay", fusion="one-by-one", clients=2, tasks=2,
                                     rounds=1, epochs=1, threads=1, loggers=("none",),
                                     checkpoint=False, cache_dir="none")
    runs = {}
    for switch in ("0", "1"):
        monkeypatch.setenv(ENV_SWITCH, switch)
        metrics = fclkit.run(config, write_results=False).metrics
        runs[switch] = metrics["per_client"]
    assert runs["0"] == runs["1"]
    assert all("fm" in models for models in runs["1"].values())  # the FM was evaluated
