"""examples/compare.py: which runs it plans and how it checks the goal from the table."""

import importlib.util
import tomllib
from pathlib import Path

import pytest
import tomli_w

import fclkit

spec = importlib.util.spec_from_file_location(
    "compare", Path(__file__).parents[1] / "examples" / "compare.py")
compare = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare)


def test_plan_gives_method_and_fm_only_the_same_label_budget_and_sweeps_both():
    runs = compare.plan("digits", 5, [1, 5, 1000])
    main = [r for r in runs if r["labels"] == 5]
    assert len(main) == 12  # 8 method runs (homogeneous + heterogeneous) + 4 baselines
    for budget in (1, 1000):
        swept = {r["label"] for r in runs if r["labels"] == budget}
        assert swept == {"one-by-one × replay", "FM without private data"}
    assert len(runs) == 12 + 2 * 2


def _group(acc, forg=0.1, fm=True):
    empty = {"accuracy": [], "forgetting": []}
    entry = {"accuracy": [acc, acc], "forgetting": [forg, forg]}
    return {"fm": entry if fm else empty, "fm_global": entry if fm else empty,
            "small": entry}


def test_goal_check_reports_margins_forgetting_and_the_heterogeneous_cost():
    g = {("b", "one-by-one × replay", "homogeneous", 5): _group(0.80, 0.10),
         ("b", "one-by-one × naive", "homogeneous", 5): _group(0.20, 0.80),
         ("b", "one-by-one × replay", "heterogeneous", 5): _group(0.77, 0.10),
         ("b", "FedAvg fine-tuning", "homogeneous", 5): _group(0.20, 0.90, fm=False),
         ("b", "FM without private data", "homogeneous", 5): _group(0.78, 0.05)}
    text = "\n".join(compare.goal_check(g, "b", 5))
    assert "**one-by-one × replay**, personalised FM 80.0 %" in text
    assert "| FedAvg fine-tuning | 20.0 | +60.0 | yes | 90.0 | yes |" in text
    assert "| FM without private data | 78.0 | +2.0 | **no** | 5.0 | **no** |" in text
    assert "a cost of +3.0 points (**over** the 2-point limit)" in text


def test_a_finished_run_made_with_another_configuration_is_not_reused(tmp_path, capsys):
    import json

    config = fclkit.ExperimentConfig(cl="replay", fusion="fedavg", clients=2, tasks=2,
                                     rounds=1, epochs=1, loggers="none",
                                     output=str(tmp_path), name="r")
    run_dir = fclkit.run(config).run_dir
    compare.check_reusable(run_dir, config)  # the same configuration: reused
    with pytest.raises(SystemExit, match="epochs: 1 there, 2 now"):
        compare.check_reusable(run_dir, config.evolve(epochs=2))
    with pytest.raises(SystemExit, match="client_models: \\['mlp'\\] there, \\['cnn'\\] now"):
        compare.check_reusable(run_dir, config.evolve(client_models="cnn"))
    compare.check_reusable(run_dir, config.evolve(client_models="mlp"))  # = what 'auto' gave
    with pytest.raises(SystemExit, match="strategy option mem_size: 200 there, 50 now"):
        compare.check_reusable(run_dir, config.evolve(cl_options={"mem_size": 50}))
    # a component default that changed since the run: only run.json's options show it
    info = json.loads((run_dir / "run.json").read_text())
    replay = next(c for c in info["components"] if c["name"] == "replay")
    replay["options"]["mem_size"] = 500
    (run_dir / "run.json").write_text(json.dumps(info))
    with pytest.raises(SystemExit, match="strategy option mem_size: 500 there, 200 now"):
        compare.check_reusable(run_dir, config)
    for c in info["components"]:  # a run made before run.json recorded options
        del c["options"]
    (run_dir / "run.json").write_text(json.dumps(info))
    compare.check_reusable(run_dir, config)
    assert "records no options of strategy 'replay'" in capsys.readouterr().out
    saved = tomllib.loads((run_dir / "config.toml").read_text())
    del saved["grad_clip"]  # added later, and its default (off) is what runs did before
    (run_dir / "config.toml").write_text(tomli_w.dumps(saved))
    compare.check_reusable(run_dir, config)
    with pytest.raises(SystemExit, match="grad_clip: '\\(absent\\)' there, 5.0 now"):
        compare.check_reusable(run_dir, config.evolve(grad_clip=5.0))
    del saved["public_labels"]  # a config field the run's fclkit did not have
    (run_dir / "config.toml").write_text(tomli_w.dumps(saved))
    with pytest.raises(SystemExit, match="public_labels: '\\(absent\\)' there"):
        compare.check_reusable(run_dir, config)
