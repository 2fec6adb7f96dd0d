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


def test_plan_has_the_strong_baselines_ceilings_and_ablations_of_every_benchmark():
    for benchmark in ("digits", "langid", "split-fmnist"):
        runs = compare.plan(benchmark, 5, fm="efficientnet-lite")
        labels = {(r["label"], r["models"]) for r in runs}
        for needed in [(compare.METHOD, "homogeneous"), (compare.METHOD, "heterogeneous"),
                       (compare.ISOLATED, "homogeneous"), (compare.ISOLATED, "heterogeneous"),
                       (compare.FEDAVG_REPLAY, "homogeneous"), ("FedAvg × DER", "homogeneous"),
                       (compare.FEDDF, "heterogeneous"), (compare.FM_ONLY, "homogeneous"),
                       (compare.FM_FEDAVG, "homogeneous"), (compare.FM_CEILING, "homogeneous"),
                       ("guidance off", "homogeneous")]:
            assert needed in labels, (benchmark, needed)
        names = [compare.run_name(benchmark, r, 0) for r in runs]
        assert len(set(names)) == len(names)  # one results folder per row
        core = {r["label"] for r in compare.plan(benchmark, 5, "core")}
        lora_only = {compare.FM_CAPACITY[1]}  # an FM that trains LoRA (langid's)
        assert core >= compare.CORE - set(compare.LITERATURE) - (
            set() if benchmark == "langid" else lora_only)
        # the literature's methods where they apply: LoRA on a text FM, the others on images
        expected = {"PILoRA"} if benchmark == "langid" else {"GLFC × replay", "TARGET × naive"}
        assert core & set(compare.LITERATURE) == expected
    ceiling = next(r for r in compare.plan("digits", 5, tasks=5, rounds=3)
                   if r["label"] == compare.FM_CEILING)
    # one client holding every client's data, one task, as long as the whole stream
    assert ceiling["set"] == {"clients": 1, "tasks": 1, "rounds": 15}
    assert ceiling["fusion"] == "fm-fedavg" and ceiling["cl"] == "naive"
    off = next(r for r in compare.plan("digits", 5) if r["label"] == "guidance off")
    assert off["set"]["fusion_options"] == {"guidance_weight": 0.0}
    fmnist = compare.plan("split-fmnist", 5)
    assert all(r["set"]["benchmark_options"]["train_per_class"] == 200 for r in fmnist)
    langid = compare.plan("langid", 5)
    public = [r for r in langid if r["group"] == "public" and "benchmark_options" in r["set"]]
    assert {r["set"]["benchmark_options"]["public_per_language"] for r in public} == {10, 90}
    transfer = [r["set"]["fusion_options"] for r in langid if r["group"] == "public"
                and "fusion_options" in r["set"]]
    assert transfer == [{"public_views": 4}, {"public_mixes": 4}]
    # the LoRA capacity ceiling is one seed of 5 epochs; text-gru's joint ceiling one seed
    lora = next(r for r in compare.plan("langid", 5, "core")
                if r["label"] == compare.FM_CAPACITY[1])
    assert lora["max_seeds"] == 1 and lora["set"]["fm_options"] == {"lora": True}
    assert lora["set"]["fusion_options"] == {"lr": 1e-3}
    assert (lora["set"]["rounds"], lora["set"]["epochs"]) == (5, 1)
    assert {r["label"]: r["max_seeds"] for r in langid if r["label"].startswith("small model")
            } == {"small model text-bow, joint": 0, "small model text-cnn, joint": 0,
                  "small model text-gru, joint": 1}


def test_a_row_with_max_seeds_runs_only_its_first_seeds(tmp_path, capsys):
    compare.run_all(["langid"], [0, 1, 2], tmp_path, {}, 5, core=["langid"], reuse_only=True)
    missing = [line.split(": ", 1)[1] for line in capsys.readouterr().out.splitlines()
               if line.startswith("not run yet")]
    lora = [m for m in missing if "joint-lora" in m]
    assert lora == ["langid-L5-fm-part-joint-lora-5-epochs-homoge-s0"]
    assert sum("fedavg-x-replay" in m for m in missing) == 3  # an ordinary row: every seed


def _group(acc, forg=0.1, fm=True, small=None, group="baseline"):
    empty = {"accuracy": [], "forgetting": []}
    entry = {"accuracy": [acc, acc], "forgetting": [forg, forg]}
    s = entry if small is None else {"accuracy": [small, small], "forgetting": [forg, forg]}
    return {"group": group, "seeds": [0, 1], "fm": entry if fm else empty,
            "fm_global": entry if fm else empty, "small": s}


def test_goal_check_compares_with_the_ceiling_and_the_best_baseline_of_each_kind():
    homo, het = "homogeneous", "heterogeneous"
    g = {("b", compare.METHOD, homo): _group(0.80, small=0.90, group="method"),
         ("b", compare.METHOD, het): _group(0.77, small=0.85, group="method"),
         ("b", compare.FEDAVG_REPLAY, homo): _group(0.0, fm=False, small=0.92),
         ("b", compare.ISOLATED, het): _group(0.0, fm=False, small=0.80),
         ("b", compare.FEDDF, het): _group(0.70, small=0.86),
         ("b", compare.FM_ONLY, homo): _group(0.78),
         ("b", compare.FM_FEDAVG, homo): _group(0.82),
         ("b", compare.FM_CEILING, homo): _group(0.90, group="ceiling"),
         ("b", "small model mlp, joint", homo): _group(0.0, fm=False, small=0.95,
                                                      group="ceiling")}
    text = "\n".join(compare.goal_check(g, "b"))
    assert "| 80.0 | 85.5 | -5.5 | **no** |" in text  # (a): 95 % of the 90 % ceiling
    assert "FedAvg × replay's (homogeneous) | small models | 90.0 | 92.0 | -2.0 | **no** |" \
        in text
    assert "isolated × replay's (heterogeneous) | small models | 85.0 | 80.0 | +5.0 | yes |" \
        in text
    assert "FedDF × replay's (heterogeneous) | small models | 85.0 | 86.0 | -1.0 | **no** |" \
        in text
    assert "(fm-only) + 2 | FM | 80.0 | 78.0 | +2.0 | yes |" in text
    assert "within 3 points of FM-side FedAvg (fm-fedavg) | FM | 80.0 | 82.0 | -2.0 | yes |" \
        in text
    assert "cost ≤ 2 points of FM accuracy | FM, heterogeneous vs homogeneous | 77.0 | 80.0 " \
        "| -3.0 | **no** |" in text
    assert "the best small model (mlp) 95.0 %: **the small model is stronger**" in text


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


def test_an_interrupted_run_is_resumed_from_its_checkpoint_not_rerun(tmp_path):
    from fclkit.progress import Reporter

    class StopAfterFirstRound(Reporter):  # stops when the second round starts
        def round_started(self, task, round):
            if task == 1:
                raise KeyboardInterrupt

    kwargs = dict(benchmark="digits", fusion="fedavg", cl="replay", clients=2, tasks=2,
                  rounds=1, epochs=1, threads=1, loggers=("none",), output=str(tmp_path),
                  name="interrupted")
    with pytest.raises(KeyboardInterrupt):
        fclkit.run(fclkit.ExperimentConfig(**kwargs), reporter=StopAfterFirstRound())
    run_dir = tmp_path / "interrupted"
    assert (run_dir / "metrics.json").exists()  # partial results, kept
    assert compare.resumable(run_dir) and not compare.finished(run_dir)
    metrics, _ = compare._run_one({**kwargs, "resume": str(run_dir)})
    assert compare.finished(run_dir) and not compare.resumable(run_dir)
    clean = fclkit.run(fclkit.ExperimentConfig(**{**kwargs, "name": "clean"})).metrics
    assert metrics["per_client"] == clean["per_client"]


# ---------------------------------------------------------- examples/fm_regime.py

def _fm_regime():
    spec = importlib.util.spec_from_file_location(
        "fm_regime", Path(__file__).parents[1] / "examples" / "fm_regime.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fm_regime_plans_each_cell_with_its_data_size_and_only_fm_runs_at_its_image_size():
    regime = _fm_regime()
    cell = regime.plan(20, 224, tasks=5, rounds=3)
    assert {(s["row"], s["models"]) for s in cell} == {
        *((row, "homogeneous") for row in regime.ROWS),
        *((row, "heterogeneous") for row in regime.HETERO_ROWS)}
    for s in cell:
        assert s["set"]["benchmark_options"] == {"train_per_class": 20, "test_fraction": 0.03}
        assert s["set"]["public_fraction"] == 0.2 and s["labels"] == regime.LABELS
        uses_fm = regime.uses_fm(s)
        # a run without the FM does not depend on the FM's image size: one run per data size
        assert ("fm_options" in s["set"]) == uses_fm
        assert s["image_size"] == (224 if uses_fm else None)
        if uses_fm:
            assert s["set"]["fm_options"]["image_size"] == 224
    assert {s["fusion"] for s in cell if regime.uses_fm(s)} == {
        "one-by-one", "fm-fedavg", "fm-only", "feddf"}
    other = regime.plan(20, 64, tasks=5, rounds=3)
    shared = {compare.run_name("split-fmnist", s, 0) for s in cell} & {
        compare.run_name("split-fmnist", s, 0) for s in other}
    assert shared == {compare.run_name("split-fmnist", s, 0) for s in cell
                      if not regime.uses_fm(s)}
    # the whole grid: every run once, those without the FM shared by the image sizes
    runs = regime.grid([20, 200], [64, 224], tasks=5, rounds=3)
    no_fm = [s for s in cell if not regime.uses_fm(s)]
    assert len(runs) == 2 * (2 * (len(cell) - len(no_fm)) + len(no_fm))
    assert len({compare.run_name("split-fmnist", s, 0) for s in runs}) == len(runs)
    ceiling = next(s for s in cell if s["row"] == compare.FM_CEILING)
    assert (ceiling["set"]["clients"], ceiling["set"]["tasks"], ceiling["set"]["rounds"]) == (
        1, 1, 15)


def test_fm_regime_table_puts_a_run_without_the_fm_in_every_image_size_cell(tmp_path):
    regime = _fm_regime()

    def row(name, size, model, acc, group="baseline"):
        return {"row": name, "per_class": 20, "image_size": size, "seed": 0, "seconds": 1.0,
                "group": group, "models": "homogeneous",
                "results": {model: {"accuracy": acc, "forgetting": 0.0}}}

    rows = [row(compare.FEDAVG_REPLAY, None, "small", 0.5),
            row(compare.FM_CEILING, 64, "fm", 0.6, "ceiling"),
            row(compare.FM_CEILING, 224, "fm", 0.7, "ceiling"),
            row(compare.METHOD, 224, "fm", 0.68, "method")]
    doc = tmp_path / "regime.md"
    doc.write_text("old table\n<!-- analysis: kept when the table is regenerated -->\nmine\n")
    args = type("Args", (), {"image_size": [64, 224], "doc": doc})()
    regime.write_doc(rows, args, "python examples/fm_regime.py")
    text = doc.read_text()
    homogeneous = text[text.index("## Homogeneous"):text.index("## Heterogeneous")]
    lines = [line for line in homogeneous.splitlines() if line.startswith("| 20 |")]
    assert [line.split(" | ")[1:3] for line in lines] == [["64 px", "60.0"],
                                                          ["224 px", "70.0"]]
    assert all(line.split(" | ")[8] == "50.0" for line in lines)  # FedAvg × replay
    # each cell's goal check, computed from that cell's rows: 68 >= 0.95 * 70 at 224 px
    assert "### Goal check (20/class, 224 px): one-by-one × replay" in text
    check = text[text.index("### Goal check (20/class, 224 px)"):]
    assert "| personalised FM vs 0.95 × FM part, joint | 68.0 | 66.5 | +1.5 | yes |" in check
    assert doc.read_text().endswith("mine\n") and "old table" not in doc.read_text()
