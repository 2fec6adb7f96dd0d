"""The examples are real: the plugin package installs with pip and works by name."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_PLUGIN = ROOT / "examples" / "fclkit-plugin-example"


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory):
    """pip-install the example plugin into its own folder (not into the test venv)."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(EXAMPLE_PLUGIN)], check=True)
    env = {k: v for k, v in os.environ.items() if k != "FCLKIT_LOAD_PLUGINS"}
    env["PYTHONPATH"] = os.pathsep.join([str(target), env.get("PYTHONPATH", "")])
    env["COLUMNS"] = "250"  # rich wraps table cells in narrow terminals
    return env


def _fclkit(env, *args, cwd=None):
    return subprocess.run([sys.executable, "-m", "fclkit.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True)


def test_pip_installed_plugin_is_listed(installed_example):
    out = _fclkit(installed_example, "plugins")
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    for name in ("l2-anchor", "logreg", "fedavgm", "jsonl"):
        assert name in text
    assert "fclkit-plugin-example 0.1.0" in text


def test_pip_installed_strategy_runs_by_name(installed_example, tmp_path):
    out = _fclkit(installed_example, "run", "--cl", "l2-anchor", "--cl-opt", "strength=0.5",
                  "--client-models", "logreg", "--fusion", "fedavgm",
                  "--loggers", "jsonl,tensorboard",
                  "--clients", "2", "--tasks", "2", "--rounds", "2", "--epochs", "1",
                  "--quiet", "--output", str(tmp_path), "--name", "ex")
    assert out.returncode == 0, out.stderr
    info = json.loads((tmp_path / "ex" / "run.json").read_text())
    used = {c["kind"]: c for c in info["components"] if c["name"] != "tensorboard"}
    for kind, name in (("strategy", "l2-anchor"), ("client_model", "logreg"),
                       ("fusion", "fedavgm"), ("logger", "jsonl")):
        provenance = {k: v for k, v in used[kind].items() if k != "options"}
        assert provenance == {"kind": kind, "name": name, "plugin": "example",
                              "distribution": "fclkit-plugin-example", "version": "0.1.0"}
    assert used["strategy"]["options"]["strength"] == 0.5  # every option's value recorded


def test_pip_installed_logger_streams_the_run(installed_example, tmp_path):
    out = _fclkit(installed_example, "run", "--loggers", "jsonl", "--fusion", "fedavg",
                  "--cl", "naive", "--clients", "2", "--tasks", "2", "--rounds", "1",
                  "--epochs", "1", "--quiet", "--output", str(tmp_path), "--name", "j")
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in (tmp_path / "j" / "metrics.jsonl").open()]
    metrics = json.loads((tmp_path / "j" / "metrics.json").read_text())
    assert lines[-1] == {"status": "finished"}
    final = {k: v for line in lines for k, v in line.items() if k.startswith("final/")}
    assert final["final/small/average_accuracy"] == metrics["mean"]["small"]["average_accuracy"]
    assert not (tmp_path / "j" / "tensorboard").exists()  # only the loggers asked for


def test_example_plugin_passes_its_own_contract_tests(installed_example):
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(EXAMPLE_PLUGIN / "tests")], env=installed_example,
                         capture_output=True, text=True, cwd=EXAMPLE_PLUGIN)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "4 passed" in out.stdout


def test_plugin_allow_list_can_exclude_it(installed_example):
    env = {**installed_example, "FCLKIT_LOAD_PLUGINS": ""}
    out = _fclkit(env, "run", "--cl", "l2-anchor", "--quiet")
    assert out.returncode == 1 and "unknown strategy 'l2-anchor'" in out.stderr


def test_research_script_runs_its_own_strategy(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    import research_strategy

    scores = research_strategy.main(output=str(tmp_path))
    assert set(scores) == {"naive", "tiny-replay"}
    assert scores["tiny-replay"] > scores["naive"]  # replaying past tasks forgets less
