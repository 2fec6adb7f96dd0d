"""One-by-one's ``calibration = "gaussian"``: clients upload per-class feature statistics,
the server retrains each distilled FM part on features drawn from them."""

import pytest
import torch

import fclkit


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return fclkit.ExperimentConfig(cl="naive", clients=2, tasks=2, rounds=1, epochs=1,
                                   threads=1, loggers="none",
                                   fusion_options={"calibration": "gaussian"},
                                   output=str(tmp_path_factory.mktemp("runs")))


def _fusion(base):
    from fclkit.plugins import build_registry
    from fclkit.runtime.experiment import Experiment

    exp = Experiment(base, build_registry())
    exp.prepare()
    return exp, exp.server.fusion


def test_pooled_statistics_are_those_of_every_clients_examples_together(base):
    _, fusion = _fusion(base)
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(30, 4, generator=gen) + 2, torch.randn(50, 4, generator=gen) * 3
    fusion.feature_stats = {7: {0: (30.0, a.mean(0), a.var(0, unbiased=False)),
                                1: (50.0, b.mean(0), b.var(0, unbiased=False))}}
    mean, var = fusion._pooled(7)
    both = torch.cat([a, b])
    assert torch.allclose(mean, both.mean(0), atol=1e-5)
    assert torch.allclose(var, both.var(0, unbiased=False), atol=1e-4)


def test_calibration_teaches_the_fm_part_the_classes_of_the_statistics(base):
    exp, fusion = _fusion(base)
    fm = exp.foundation_model
    d = fm.precompute(exp.stream.public.x[:1]).shape[1]
    gen = torch.Generator().manual_seed(1)
    centres = {c: torch.randn(d, generator=gen) * 3 for c in (1, 4)}
    fusion.feature_stats = {c: {0: (100.0, m, torch.full((d,), 0.1))}
                            for c, m in centres.items()}
    state, known = fusion._calibrate(fm.trainable_state(), [1, 4], ("t", 0, 0))
    assert known == [1, 4]
    fm.load_trainable_state(state)
    with torch.no_grad():
        logits = fm.forward_precomputed(torch.stack([centres[1], centres[4]]))
    assert logits[:, [1, 4]].argmax(1).tolist() == [0, 1]  # each centre: its own class


def test_a_run_uploads_statistics_of_each_tasks_classes_and_checkpoints_them(base, tmp_path):
    result = fclkit.run(base.evolve(output=str(tmp_path)))
    assert result.summary("fm")["accuracy_matrix"][0][0] > 0.5
    from fclkit.checkpoint import load_checkpoint  # the state a resumed run starts from

    fusion_state = load_checkpoint(result.run_dir)["server"]["fusion"]
    stats = fusion_state["feature_stats"]
    seen = {c for task in result.metrics["task_classes"] for c in task}
    assert {int(c) for c in stats} == seen  # every class some client trained on
    for by_client in stats.values():
        for entry in by_client.values():
            assert entry["mean"].ndim == 1 and entry["var"].shape == entry["mean"].shape
            assert entry["count"] >= 1  # counts and moments only: no example leaves


def test_calibration_is_refused_where_the_fm_trains_more_than_a_head(base):
    with pytest.raises(fclkit.ConfigError, match="calibration"):
        fclkit.run(base.evolve(fusion_options={"calibration": "cov"}), write_results=False)
    with pytest.raises(fclkit.ConfigError, match="LoRA adapters"):
        fclkit.run(base.evolve(benchmark="langid", fm_options={"lora": True}),
                   write_results=False)
