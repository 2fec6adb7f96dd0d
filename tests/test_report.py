"""`fclkit report`: pictures and a Markdown summary of one or several runs."""

import json

import pytest
from conftest import PlainSGD
from PIL import Image
from typer.testing import CliRunner

import fclkit
from fclkit.cli import app


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    base = fclkit.ExperimentConfig(cl="plain-sgd", fusion="fedavg", clients=2, tasks=3,
                                   rounds=1, epochs=1,
                                   output=str(out))
    a = fclkit.run(base.evolve(name="a"), components=[PlainSGD]).run_dir
    b = fclkit.run(base.evolve(name="b", fusion="isolated"), components=[PlainSGD]).run_dir
    return a, b


def test_report_on_two_runs_draws_every_picture(two_runs, tmp_path):
    res = CliRunner().invoke(app, ["report", *map(str, two_runs), "-o", str(tmp_path)])
    assert res.exit_code == 0, res.output
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["communication.png", "curves.png", "heatmap-a-small.png",
                     "heatmap-b-small.png", "report.md"]
    for png in tmp_path.glob("*.png"):
        with Image.open(png) as im:
            assert im.size[0] > 300 and im.size[1] > 200
    md = (tmp_path / "report.md").read_text()
    assert "| a | plain-sgd | fedavg |" in md and "| b | plain-sgd | isolated |" in md
    for png in names[:-1]:
        assert f"]({png})" in md


def test_report_numbers_come_from_metrics(two_runs, tmp_path):
    from fclkit.report import make_report

    out = make_report([two_runs[0]], tmp_path)
    m = json.loads((two_runs[0] / "metrics.json").read_text())
    acc = 100 * m["mean"]["small"]["average_accuracy"]
    assert f"| {acc:.1f} |" in (out / "report.md").read_text()


def test_report_on_one_run_defaults_to_its_folder(two_runs):
    res = CliRunner().invoke(app, ["report", str(two_runs[1])])
    assert res.exit_code == 0
    assert (two_runs[1] / "report" / "report.md").exists()


def test_report_refuses_a_non_run_folder(tmp_path):
    res = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 1
    assert "a fclkit results folder?" in " ".join(res.output.split())
