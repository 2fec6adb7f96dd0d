"""Configuration: validation at construction, TOML loading, overrides, options."""

import attrs
import pytest

from fclkit import ConfigError, ExperimentConfig, load_config
from fclkit.config import (
    FIELDS,
    build_options,
    commented_toml,
    non_negative,
    parse_option_pairs,
)


def test_every_field_has_help():
    assert all(a.metadata.get("help") for a in FIELDS.values())


def test_config_is_frozen_and_evolve_validates():
    cfg = ExperimentConfig()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        cfg.clients = 5
    assert cfg.evolve(clients=5).clients == 5
    with pytest.raises(ConfigError, match="clients"):
        cfg.evolve(clients=0)


@pytest.mark.parametrize("field,value,allowed", [
    ("clients", 0, ">= 1"),
    ("rounds", -1, ">= 1"),
    ("lr", 0, "> 0"),
    ("lr", float("nan"), "> 0"),
    ("partition", "zipf", "iid, dirichlet"),
    ("device", "gpu", "cpu"),
    ("public_fraction", 1.0, "[0.0, 1.0)"),
    ("clients", True, "integer"),
])
def test_bad_values_name_field_value_and_allowed(field, value, allowed):
    with pytest.raises(ConfigError) as err:
        ExperimentConfig(**{field: value})
    msg = str(err.value)
    assert field in msg and repr(value) in msg and allowed in msg
    assert "\n" not in msg


def test_client_models_accepts_comma_list():
    assert ExperimentConfig(client_models="mlp, cnn").client_models == ("mlp", "cnn")
    assert ExperimentConfig(client_models="0=mlp, 2=cnn,default=lenet").client_models == {
        "0": "mlp", "2": "cnn", "default": "lenet"}
    assert ExperimentConfig(client_models={0: "mlp", 1: "cnn"}).client_models == {
        "0": "mlp", "1": "cnn"}  # TOML gives string keys; Python users may pass ints


def test_toml_file_then_flags_override(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text('cl = "ewc"\nclients = 4\n[cl_options]\newc_lambda = 5.0\nmode = "online"\n')
    cfg = load_config(path, {"clients": 2, "cl_options": {"ewc_lambda": 7.0}, "seed": None})
    assert cfg.cl == "ewc" and cfg.clients == 2 and cfg.seed == 0
    assert cfg.cl_options == {"ewc_lambda": 7.0, "mode": "online"}


def test_unknown_toml_key_is_named(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text("clients = 2\nround = 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "round" in str(err.value) and str(path) in str(err.value)
    assert err.value.hint == "did you mean 'rounds'?"


def test_invalid_toml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("clients = = 2")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml")


def test_option_pairs_are_typed():
    assert parse_option_pairs(["a=1", "b=0.5", "c=true", "d=online", 'e="x y"'], "--cl-opt") == {
        "a": 1, "b": 0.5, "c": True, "d": "online", "e": "x y"}
    with pytest.raises(ConfigError, match="key=value"):
        parse_option_pairs(["novalue"], "--cl-opt")


@attrs.frozen
class _Opts:
    alpha: float = attrs.field(default=1.0, metadata={"help": "a"})


def test_component_options_unknown_key_lists_allowed():
    assert build_options(_Opts, {"alpha": 2.0}, component="x", table="cl_options").alpha == 2.0
    with pytest.raises(ConfigError) as err:
        build_options(_Opts, {"alpah": 2.0}, component="strategy 'x'", table="cl_options")
    assert "cl_options.alpah" in str(err.value) and "alpha" in str(err.value)
    assert err.value.hint == "did you mean 'alpha'?"


def test_component_name_prefix_on_a_one_component_table_gets_a_hint():
    # `--fusion-opt one-by-one.alpha=2` is a natural guess; the table is the fusion's alone
    values = parse_option_pairs(["x.alpha=2"], "--fusion-opt")
    with pytest.raises(ConfigError) as err:
        build_options(_Opts, values, component="fusion 'x'", table="fusion_options")
    assert "alpha=2" in err.value.hint and "without a name prefix" in err.value.hint


@attrs.frozen
class _Weights:
    weight: float = attrs.field(default=1.0, validator=non_negative, metadata={"help": "w"})


@pytest.mark.parametrize("value", [-1, -0.5, float("inf"), float("nan"), True, "1"])
def test_non_negative_refuses_with_the_field_named(value):
    with pytest.raises(ConfigError, match="cl_options.weight") as err:
        build_options(_Weights, {"weight": value}, component="x", table="cl_options")
    assert "must be a finite number >= 0" in str(err.value)


@pytest.mark.parametrize("value", [0, 0.0, 2, 1e6])
def test_non_negative_accepts_zero_and_positive(value):
    assert build_options(_Weights, {"weight": value}, component="x",
                         table="cl_options").weight == value


def test_commented_toml_round_trips(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text(commented_toml())
    assert load_config(path) == ExperimentConfig()


def test_per_client_architectures():
    from fclkit.config import assign_architectures

    assert assign_architectures(("mlp", "cnn"), 3) == {0: "mlp", 1: "cnn", 2: "mlp"}
    assert assign_architectures({"1": "cnn", "default": "mlp"}, 3) == {
        0: "mlp", 1: "cnn", 2: "mlp"}
    with pytest.raises(ConfigError, match=r"client\(s\) \[2\]"):
        assign_architectures({"0": "mlp", "1": "cnn"}, 3)
    with pytest.raises(ConfigError, match="there is no client 3"):
        assign_architectures({"3": "mlp", "default": "cnn"}, 3)
    with pytest.raises(ConfigError, match="client ids"):
        ExperimentConfig(client_models={"first": "mlp"})
    with pytest.raises(ConfigError, match="architecture name"):
        ExperimentConfig(client_models={"0": 3})


def test_the_old_guidance_fields_still_load_as_fusion_options(tmp_path):
    """guidance_* moved from the config into one-by-one's options: an old TOML keeps
    working, with a one-line warning that gives the new spelling."""
    from fclkit.errors import FclkitDeprecationWarning

    path = tmp_path / "old.toml"
    path.write_text('guidance_weight = 0.5\nguidance_examples = "all"\n'
                    '[fusion_options]\nepochs = 2\n')
    with pytest.warns(FclkitDeprecationWarning,
                      match=r"guidance_weight is deprecated, write it as \[fusion_options\] "
                            r"guidance_weight = 0.5"):
        config = load_config(path)
    assert config.fusion_options == {"guidance_weight": 0.5, "guidance_examples": "all",
                                     "epochs": 2}
    with pytest.warns(FclkitDeprecationWarning):  # a CLI override is moved the same way
        assert load_config(None, {"guidance_weight": 0.0}).fusion_options == {
            "guidance_weight": 0.0}


def test_an_old_guidance_field_is_ignored_by_a_fusion_without_guidance():
    """With fedavg the old field had no effect, and so it is dropped with a warning."""
    from fclkit.plugins import build_registry
    from fclkit.progress import Reporter
    from fclkit.runtime.experiment import Experiment

    warned = []

    class Recorder(Reporter):
        def warn(self, message: str) -> None:
            warned.append(message)

    config = ExperimentConfig(fusion="fedavg", fusion_options={"guidance_weight": 1.0})
    experiment = Experiment(config, build_registry(), Recorder())
    assert attrs.asdict(experiment.components.one("fusion").options) == {
        "weighting": "examples", "aggregation": "mean", "trim_fraction": 0.1}
    assert warned == ["fusion_options.guidance_weight is ignored: fusion 'fedavg' has no "
                      "such option"]
    with pytest.raises(ConfigError, match="fusion 'fedavg' has no option 'epochs'"):
        Experiment(config.evolve(fusion_options={"epochs": 2}), build_registry())
