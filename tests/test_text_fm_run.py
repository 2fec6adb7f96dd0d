"""End to end: langid + heterogeneous text models + the hf foundation model + one-by-one."""

import pytest

import fclkit


@pytest.mark.slow
def test_langid_run_with_minilm_and_one_by_one(tmp_path, plain_sgd, monkeypatch):
    import fclkit_builtins.hf
    import fclkit_builtins.text
    from fclkit.plugins import build_registry

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    registry = build_registry(extra_plugins=[fclkit_builtins.text, fclkit_builtins.hf])
    if "one-by-one" not in registry.names("fusion"):
        pytest.skip("the one-by-one fusion plugin is not installed")
    config = fclkit.ExperimentConfig(
        benchmark="langid", benchmark_options={
            "languages": "en,de,fr,ru", "train_per_language": 24, "test_per_language": 6,
            "public_per_language": 6},
        clients=2, tasks=2, rounds=2, client_models=("text-bow", "text-cnn"), cl="plain-sgd",
        fusion="one-by-one", fm="hf", output=str(tmp_path))
    result = fclkit.run(config, registry=registry, components=[plain_sgd],
                        write_results=False)
    per = result.metrics["per_client"]
    assert set(per["0"]) >= {"small", "fm", "fm_global"}
    for model in ("small", "fm"):
        matrix = per["1"][model]["accuracy_matrix"]
        assert len(matrix) == 2 and all(0.0 <= v <= 1.0 for row in matrix for v in row)
