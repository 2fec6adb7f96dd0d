"""Property-based tests: whatever the input, bad configuration is a one-line ConfigError."""

import string

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from fclkit import ConfigError, ExperimentConfig, FclkitError, load_config
from fclkit.cli import app
from fclkit.config import FIELDS, config_from_mapping, parse_option_pairs

toml_scalars = st.one_of(
    st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(), st.text(max_size=12),
    st.lists(st.text(string.ascii_lowercase, min_size=1, max_size=6), max_size=3))
values = st.one_of(toml_scalars, st.dictionaries(st.text(string.ascii_lowercase, min_size=1,
                                                         max_size=8), toml_scalars, max_size=3))
known_key_dicts = st.dictionaries(st.sampled_from(sorted(FIELDS)), values, max_size=6)
SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(known_key_dicts)
def test_any_table_of_known_keys_is_a_config_or_a_config_error(data):
    try:
        cfg = config_from_mapping(data)
    except ConfigError as exc:
        assert exc.field and "\n" not in str(exc)
    else:
        assert isinstance(cfg, ExperimentConfig)


@SETTINGS
@given(st.text(string.ascii_lowercase + "_", min_size=1, max_size=20).filter(
    lambda k: k not in FIELDS), toml_scalars)
def test_an_unknown_key_is_always_named(key, value):
    with pytest.raises(ConfigError) as err:
        config_from_mapping({key: value})
    assert key in str(err.value)


@SETTINGS
@given(known_key_dicts)
def test_toml_files_load_like_mappings(tmp_path, data):
    path = tmp_path / "exp.toml"
    path.write_text(tomli_w.dumps(data))
    try:
        expected = config_from_mapping(data)
    except ConfigError as exc:
        with pytest.raises(ConfigError) as err:
            load_config(path)
        assert err.value.field == exc.field
    else:
        assert load_config(path) == expected


@SETTINGS
@given(st.binary(max_size=200))
def test_garbage_files_are_a_config_error(tmp_path, blob):
    path = tmp_path / "exp.toml"
    path.write_bytes(blob)
    try:
        load_config(path)
    except ConfigError:
        pass
    except UnicodeDecodeError:
        pytest.fail("undecodable bytes must be a ConfigError")


@SETTINGS
@given(st.lists(st.text(max_size=15), max_size=4))
def test_option_pairs_parse_or_say_why(pairs):
    try:
        parsed = parse_option_pairs(pairs, "--cl-opt")
    except ConfigError as exc:
        assert "key=value" in str(exc)
    else:
        assert len(parsed) <= len(pairs)


runner = CliRunner()


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["--clients", "--tasks", "--rounds", "--epochs", "--batch-size"]),
       st.integers(-10**9, 0))
def test_cli_counts_below_one_fail_in_one_line(flag, value):
    res = runner.invoke(app, ["run", "-q", flag, str(value)])
    assert res.exit_code == 1
    field = flag[2:].replace("-", "_")
    assert res.output.startswith(f"error: invalid {field} = {value}")
    assert "Traceback" not in res.output


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["--cl", "--fusion", "--benchmark", "--engine", "--client-models"]),
       st.text(string.ascii_letters + string.digits + "-_.", min_size=1, max_size=20))
def test_cli_unknown_names_fail_in_one_line(flag, name):
    res = runner.invoke(app, ["run", "-q", flag, f"zz{name}"])
    assert res.exit_code == 1
    assert res.output.startswith("error: ") and "Traceback" not in res.output
    assert "available:" in res.output or "invalid" in res.output


def test_fclkit_error_is_the_base_of_config_errors():
    assert issubclass(ConfigError, FclkitError)
