"""The command line, through Typer's runner and (for start-up) a real subprocess."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from fclkit.cli import app

runner = CliRunner()


def _run(*args):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_plugins_lists_components_by_kind_with_distribution():
    res = _run("plugins")
    assert res.exit_code == 0
    for text in ("fedavg", "mlp", "cnn", "digits", "local", "fclkit 0.1.0"):
        assert text in res.output


def test_plugins_options_show_help_texts():
    res = _run("plugins", "--options")
    assert "weighting" in res.output and "width of each hidden layer" in res.output


@pytest.mark.parametrize("args,expected", [
    (["--cl", "nope"], "unknown strategy 'nope'; available:"),
    (["--fusion", "nope"],
     "unknown fusion 'nope'; available: fedavg, fm-only, isolated, one-by-one"),
    (["--client-models", "resnet999"],
     "unknown client model 'resnet999'; available: cnn, lenet, mlp"),
    (["--benchmark", "nope"], "unknown benchmark 'nope'; available: digits, langid, mnist"),
    (["--engine", "nope"], "unknown engine 'nope'; available: flower, local"),
    (["--fm", "nope"], "unknown foundation model 'nope'"),
    (["--clients", "0"], "invalid clients = 0: must be an integer >= 1"),
    (["--rounds", "-1"], "invalid rounds = -1: must be an integer >= 1"),
    (["--lr", "0"], "invalid lr = 0.0: must be a finite number > 0"),
    (["--tasks", "11"], "invalid tasks = 11: this benchmark has 10 classes"),
    (["--partition", "zipf"], "invalid partition = 'zipf': must be one of: iid, dirichlet"),
    (["--cl-opt", "oops"], "must look like key=value"),
    (["--fusion-opt", "weighting=median"], "invalid fusion_options.weighting = 'median'"),
])
def test_bad_input_is_one_line_without_traceback(args, expected, tmp_path):
    res = _run("run", "--quiet", "--output", str(tmp_path), *args)
    assert res.exit_code == 1
    assert expected in " ".join(res.output.split())
    assert "Traceback" not in res.output
    assert res.output.strip().splitlines()[0].startswith("error:")


def test_unknown_toml_key_names_the_key(tmp_path):
    cfg = tmp_path / "exp.toml"
    cfg.write_text("clients = 2\nroundz = 3\n")
    res = _run("run", "--config", str(cfg))
    assert res.exit_code == 1
    assert "invalid roundz" in res.output and "did you mean 'rounds'?" in res.output


def test_debug_flag_shows_the_traceback(tmp_path):
    with pytest.raises(Exception, match="invalid clients"):
        runner.invoke(app, ["run", "--clients", "0", "--debug"], catch_exceptions=False)


def test_init_writes_a_config_that_runs_as_is(tmp_path):
    path = tmp_path / "exp.toml"
    assert _run("init", str(path)).exit_code == 0
    assert "# number of clients" in path.read_text()
    assert _run("init", str(path)).exit_code == 1  # refuses to overwrite


def test_import_and_help_do_not_load_heavy_libraries():
    code = ("import sys, fclkit, fclkit.cli, fclkit.plugins, fclkit.config; "
            "print(sorted(m for m in ('torch','avalanche','transformers','peft') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_listing_plugins_loads_no_heavy_library():
    """`fclkit plugins` imports every installed plugin: none may pull in the ML stack."""
    code = ("import sys; from fclkit.plugins import build_registry; r = build_registry(); "
            "assert not r.broken, r.broken; "
            "print(sorted(m for m in ('torch','avalanche','transformers','peft','flwr','ray',"
            "'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_help_lists_every_required_option():
    res = _run("run", "--help")
    text = " ".join(res.output.split())
    for flag in ("--cl", "--fusion", "--client-models", "--fm", "--benchmark", "--engine",
                 "--clients", "--tasks", "--rounds", "--epochs", "--seed", "--device",
                 "--config", "--output"):
        assert flag in text


@pytest.mark.slow
def test_cli_run_writes_results(tmp_path):
    res = _run("run", "--quiet", "--clients", "2", "--tasks", "2", "--rounds", "1",
               "--epochs", "1", "--output", str(tmp_path), "--name", "cli")
    assert res.exit_code == 0, res.output
    assert "Final metrics" in res.output and "Accuracy matrix" in res.output
    metrics = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert metrics["complete"] and metrics["tasks"] == 2


def test_an_old_config_file_runs_with_a_one_line_deprecation_warning(tmp_path):
    path = tmp_path / "old.toml"
    path.write_text('fusion = "fedavg"\nguidance_weight = 1.0\nclients = 2\ntasks = 2\n'
                    'rounds = 1\nepochs = 1\nloggers = "none"\n')
    result = runner.invoke(app, ["run", "--config", str(path), "-q", "--output",
                                 str(tmp_path / "runs")], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    shown = " ".join(result.output.split())
    assert ("warning: config file " in shown and "guidance_weight is deprecated, write it as "
            "[fusion_options] guidance_weight = 1.0" in shown)
    assert "fusion_options.guidance_weight is ignored: fusion 'fedavg' has no such option" \
        in shown
