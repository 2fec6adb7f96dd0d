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
     "unknown fusion 'nope'; available: fedavg, feddf, fedprox, fm-fedavg, fm-only, "
     "glfc, isolated, one-by-one, pilora, target"),
    (["--client-models", "resnet999"],
     "unknown client model 'resnet999'; available: cnn, lenet, mlp"),
    (["--benchmark", "nope"],
     "unknown benchmark 'nope'; available: digits, hf-dataset, imagefolder, langid, "
     "langid-real, mnist"),
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


# ------------------------------------------- reliability of the command line's inputs


def test_output_that_is_a_file_is_one_line_before_anything_loads(tmp_path, monkeypatch):
    import fclkit.runtime.lifecycle as lifecycle

    def no_loading(*args, **kwargs):
        raise AssertionError("the run started loading before refusing --output")

    monkeypatch.setattr(lifecycle, "build_registry", no_loading)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a folder")
    for output, where in ((a_file, "is a file, not a folder"),
                          (a_file / "runs", f"goes through the file {a_file}, not a folder")):
        res = _run("run", "-q", "--output", str(output))
        assert res.exit_code == 1
        lines = res.output.strip().splitlines()
        assert lines[0] == f"error: invalid output = '{output}': {where}"
        assert lines[1].startswith("hint: --output (output in TOML) names the folder")
        assert len(lines) == 2 and "Traceback" not in res.output
    import fclkit

    with pytest.raises(fclkit.ConfigError, match="invalid output"):
        fclkit.run(fclkit.ExperimentConfig(output=str(a_file)))


@pytest.mark.parametrize("flag,value,expected", [
    ("--client-models", "mlp,,cnn", "invalid client_models = 'mlp,,cnn': name 2 of 3 is empty"),
    ("--client-models", "mlp,", "invalid client_models = 'mlp,': name 2 of 2 is empty"),
    ("--client-models", "0=mlp,,1=cnn",
     "invalid client_models = '0=mlp,,1=cnn': name 2 of 3 is empty"),
    ("--loggers", ",none", "invalid loggers = ',none': name 1 of 2 is empty"),
])
def test_an_empty_name_in_a_comma_list_is_refused_by_its_position(flag, value, expected,
                                                                   tmp_path):
    res = _run("run", "-q", "--output", str(tmp_path), flag, value)
    assert res.exit_code == 1
    assert res.output.startswith(f"error: {expected}"), res.output
    assert "hint: remove the extra comma" in res.output and "Traceback" not in res.output


def test_an_empty_name_in_a_toml_list_is_refused_by_its_position():
    from fclkit import ConfigError, ExperimentConfig

    with pytest.raises(ConfigError, match="name 2 of 3 is empty"):
        ExperimentConfig(client_models=["mlp", " ", "cnn"])


@pytest.mark.parametrize("env", [{"COLUMNS": "80"}, {"COLUMNS": "40"}, {"COLUMNS": None}],
                         ids=["80-columns", "40-columns", "no-terminal-width"])
def test_plugins_never_cuts_a_name_or_kind(env):
    from fclkit.config import options_help
    from fclkit.plugins import build_registry

    registry = build_registry()
    res = runner.invoke(app, ["plugins", "--options"], env=env, catch_exceptions=False)
    assert res.exit_code == 0
    assert "…" not in "".join(line.split("│")[1] + line.split("│")[2] for line in
                              res.output.splitlines() if line.count("│") >= 3)
    cells = {cell.strip() for line in res.output.splitlines() for cell in line.split("│")}
    for e in registry.all():
        assert e.name in cells, e.name  # whole, in its own cell: `| grep NAME` finds it
        assert e.kind.replace("_", " ") in cells
        assert e.plugin in cells
        for key, _, _ in options_help(e.cls.Options):
            assert key in cells, (e.name, key)


def test_plugins_through_a_pipe_keeps_every_name_whole():
    import os

    from fclkit.plugins import build_registry

    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    env["FCLKIT_LOAD_PLUGINS"] = ""
    out = subprocess.run([sys.executable, "-m", "fclkit.cli", "plugins"], env=env,
                         capture_output=True, text=True, check=True).stdout
    for e in build_registry().all():
        assert any(f"│ {e.name} " in line for line in out.splitlines()), e.name


def test_fail_prints_one_line_and_one_hint(capsys):
    import typer

    from fclkit.cli import _fail
    from fclkit.errors import FclkitError

    with pytest.raises(typer.Exit):
        _fail(FclkitError("first part\n  second part\n", hint="do this\nthen that"), False)
    assert capsys.readouterr().err.splitlines() == [
        "error: first part second part", "hint: do this then that"]


@pytest.fixture(scope="module")
def output_folder(tmp_path_factory):
    """An --output folder: two finished runs and one that stopped early."""
    import shutil

    from conftest import PlainSGD

    import fclkit

    out = tmp_path_factory.mktemp("output")
    base = fclkit.ExperimentConfig(cl="plain-sgd", fusion="fedavg", clients=2, tasks=2,
                                   rounds=1, epochs=1, threads=1, loggers="none",
                                   output=str(out))
    fclkit.run(base.evolve(name="a"), components=[PlainSGD])
    fclkit.run(base.evolve(name="b", fusion="isolated"), components=[PlainSGD])
    shutil.copytree(out / "a", out / "c-stopped")
    metrics = json.loads((out / "c-stopped" / "metrics.json").read_text())
    (out / "c-stopped" / "metrics.json").write_text(json.dumps({**metrics,
                                                                "complete": False}))
    info = json.loads((out / "c-stopped" / "run.json").read_text())
    (out / "c-stopped" / "run.json").write_text(json.dumps({**info, "status": "failed"}))
    return out


def test_report_of_an_output_folder_reports_every_finished_run(output_folder, tmp_path):
    res = _run("report", str(output_folder), "-o", str(tmp_path))
    assert res.exit_code == 0, res.output
    md = (tmp_path / "report.md").read_text()
    assert "| a | plain-sgd | fedavg |" in md and "| b | plain-sgd | isolated |" in md
    assert "| c-stopped |" not in md
    assert f"Not reported (unfinished): `{output_folder / 'c-stopped'}` (failed)" in md
    assert sorted(p.name for p in tmp_path.glob("heatmap-*")) == [
        "heatmap-a-small.png", "heatmap-b-small.png"]


def test_report_of_a_folder_whose_runs_all_stopped_says_so(output_folder, tmp_path):
    import shutil

    shutil.copytree(output_folder / "c-stopped", tmp_path / "out" / "c-stopped")
    res = _run("report", str(tmp_path / "out"))
    assert res.exit_code == 1
    assert res.output.startswith(f"error: {tmp_path / 'out'} holds 1 run(s) and none has "
                                 "finished: c-stopped (failed)")


def test_resume_of_an_output_folder_names_its_runs(output_folder):
    res = _run("run", "-q", "--resume", str(output_folder))
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert lines[0] == (f"error: {output_folder} is a folder of 3 run(s), not one run: "
                        "a (finished), b (finished), c-stopped (failed); --resume "
                        "continues one of them")
    assert lines[1] == ("hint: pass that run's folder, e.g. fclkit run --resume "
                        f"{output_folder / 'c-stopped'}")


def test_resume_of_a_folder_that_is_no_run(tmp_path):
    res = _run("run", "-q", "--resume", str(tmp_path))
    assert res.exit_code == 1
    assert res.output.startswith(f"error: {tmp_path} is not a fclkit results folder")
    res = _run("run", "-q", "--resume", str(tmp_path / "nope"))
    assert res.output.startswith(f"error: {tmp_path / 'nope'} does not exist")


def test_runs_started_together_get_distinct_folders(tmp_path, monkeypatch):
    """Threads creating results folders at the same moment, with the same timestamp:
    each gets its own folder (mkdir is atomic), and each folder holds its own run's
    files only."""
    import threading
    import tomllib

    from fclkit import ExperimentConfig, results

    monkeypatch.setattr(results.time, "strftime", lambda fmt, *a: "20250101-120000")
    n = 12
    start = threading.Barrier(n)
    made: dict[int, object] = {}

    def create(rounds):  # the same name for every run; rounds tells the runs apart
        config = ExperimentConfig(output=str(tmp_path / "runs"), rounds=rounds)
        start.wait()
        run_dir = results.create_run_dir(config)
        results.write_start(run_dir, config, [])
        made[rounds] = run_dir

    threads = [threading.Thread(target=create, args=(r,)) for r in range(1, n + 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    base = "20250101-120000-replay-one-by-one-s0"
    assert sorted(d.name for d in made.values()) == sorted(
        [base] + [f"{base}-{k}" for k in range(2, n + 1)])  # distinct, none lost
    for rounds, run_dir in made.items():
        assert tomllib.loads((run_dir / "config.toml").read_text())["rounds"] == rounds
        assert sorted(p.name for p in run_dir.iterdir()) == ["config.toml", "run.json"]


def test_same_name_twice_gets_a_suffix_not_the_same_folder(tmp_path):
    from fclkit import ExperimentConfig, results

    config = ExperimentConfig(output=str(tmp_path), name="exp")
    first, second, third = (results.create_run_dir(config) for _ in range(3))
    assert [first.name, second.name, third.name] == ["exp", "exp-2", "exp-3"]
    stamped = [results.create_run_dir(ExperimentConfig(output=str(tmp_path)),
                                       timestamp="20250101-000000") for _ in range(2)]
    assert stamped[1].name == stamped[0].name + "-2"
