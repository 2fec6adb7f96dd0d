"""Property-based tests: whatever the input, bad configuration is a one-line ConfigError,
a bad client update is rejected with a reason, a damaged checkpoint is refused."""

import math
import string
from pathlib import Path

import pytest
import tomli_w
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from fclkit import ConfigError, ExperimentConfig, FclkitError, checkpoint, load_config
from fclkit.cli import app
from fclkit.config import FIELDS, config_from_mapping, parse_option_pairs
from fclkit.messages import Upload
from fclkit.validation import UpdateValidator

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


# ------------------------------------------------- client updates (UpdateValidator)


MAX_EXAMPLES = 1000


def _small_model(architecture):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))


SMALL_SPEC = {k: (tuple(v.shape), v.dtype) for k, v in _small_model("mlp").state_dict().items()}
FM_REFERENCE = {"head.weight": torch.zeros(2, 4), "head.bias": torch.zeros(2)}
FM_SPEC = {k: (tuple(v.shape), v.dtype) for k, v in FM_REFERENCE.items()}
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64,
          torch.int32, torch.uint8, torch.bool]


def _validator(with_fm):
    return UpdateValidator({0: "mlp", 1: "cnn"}, _small_model, MAX_EXAMPLES,
                           fm_reference=(lambda: FM_REFERENCE) if with_fm else None)


@st.composite
def tensor_entries(draw, shape, dtype):
    """A value for one expected tensor, and whether it is acceptable."""
    how = draw(st.sampled_from(["ok", "ok", "ok", "shape", "dtype", "nan", "inf", "list",
                                "none", "number", "string"]))
    if how == "shape":
        other = tuple(draw(st.lists(st.integers(0, 5), max_size=3)))
        if other == shape:
            other = (*shape, 1)
        return torch.zeros(other, dtype=dtype), False
    if how == "dtype":
        other = draw(st.sampled_from([d for d in DTYPES if d != dtype]))
        return torch.zeros(shape, dtype=other), False
    value = torch.zeros(shape, dtype=dtype)
    if how in ("nan", "inf") and dtype.is_floating_point and value.numel():
        index = draw(st.integers(0, value.numel() - 1))
        value.view(-1)[index] = float("nan") if how == "nan" else draw(
            st.sampled_from([math.inf, -math.inf]))
        return value, False
    if how == "list":
        return value.tolist(), False
    if how == "none":
        return None, False  # a None value counts as missing
    if how == "number":
        return draw(st.one_of(st.integers(), st.floats())), False
    if how == "string":
        return draw(st.text(max_size=5)), False
    if dtype.is_floating_point and value.numel():
        finite = draw(st.lists(st.floats(-1e4, 1e4, width=16), min_size=value.numel(),
                               max_size=value.numel()))
        value = torch.tensor(finite).reshape(shape).to(dtype)
    return value, True


@st.composite
def states(draw, spec):
    """A state dict against ``spec`` (missing, extra, wrong entries), and whether it is
    acceptable."""
    if draw(st.integers(0, 19)) == 0:
        return draw(st.sampled_from([None, [], "weights", 3, ("a", "b")])), False
    state, ok = {}, True
    for key, (shape, dtype) in spec.items():
        if draw(st.integers(0, 9)) == 0:  # missing
            ok = False
            continue
        value, good = draw(tensor_entries(shape, dtype))
        state[key] = value
        ok = ok and good
    for extra in draw(st.lists(st.one_of(st.text(max_size=8), st.integers(), st.none()),
                               max_size=2)):
        if extra not in spec:
            state[extra] = torch.zeros(1)
            ok = False
    return state, ok


@st.composite
def payloads(draw):
    kind = draw(st.sampled_from(["empty", "tensors", "tensors", "nan", "not a mapping",
                                 "bad key", "bad value"]))
    if kind == "empty":
        return {}, True
    if kind == "not a mapping":
        return draw(st.sampled_from([None, [torch.zeros(2)], "logits", 5])), False
    shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
    value = torch.zeros(shape, dtype=draw(st.sampled_from(DTYPES)))
    if kind == "nan":
        if value.is_floating_point() and value.numel():
            value.view(-1)[0] = float(draw(st.sampled_from(["nan", "inf", "-inf"])))
            return {"logits": value}, False
        return {"logits": value}, True
    if kind == "bad key":
        return {draw(st.one_of(st.integers(), st.none())): value}, False
    if kind == "bad value":
        return {"logits": draw(st.one_of(st.integers(), st.text(max_size=3),
                                         st.just([1.0])))}, False
    return {draw(st.text(min_size=1, max_size=8)): value}, True


example_counts = st.one_of(st.integers(-10**15, 10**15), st.integers(0, 2 * MAX_EXAMPLES),
                           st.floats(), st.booleans(), st.none(), st.text(max_size=4))


@settings(max_examples=100, deadline=None)
@given(client_id=st.one_of(st.sampled_from([0, 0, 0, 1, 7, -1]), st.text(max_size=3),
                           st.booleans(), st.none()),
       architecture=st.sampled_from(["mlp", "mlp", "mlp", "cnn", "", "MLP"]),
       num_examples=example_counts, small=states(SMALL_SPEC),
       fm=st.one_of(st.none(), states(FM_SPEC)), payload=payloads(), with_fm=st.booleans())
def test_update_validator_accepts_exactly_the_valid_uploads(client_id, architecture,
                                                            num_examples, small, fm,
                                                            payload, with_fm):
    """Random uploads: the validator never raises, rejects with a one-line reason, and
    accepts only an upload every part of which is right (never a wrong accept)."""
    (small_state, small_ok), (payload_value, payload_ok) = small, payload
    fm_state, fm_ok = (None, True) if fm is None else fm
    upload = Upload(client_id=client_id, architecture=architecture, classes_seen=(0,),
                    num_examples=num_examples, small_state=small_state,
                    fm_state=fm_state, payload=payload_value)
    valid = (client_id == 0 and not isinstance(client_id, bool) and architecture == "mlp"
             and isinstance(num_examples, int) and not isinstance(num_examples, bool)
             and 1 <= num_examples <= MAX_EXAMPLES and small_ok and payload_ok
             and (fm_state is None or (with_fm and fm_ok)))
    reason = _validator(with_fm).check(upload)
    if valid:
        assert reason is None
    else:
        assert isinstance(reason, str) and reason and "\n" not in reason


@settings(max_examples=50, deadline=None)
@given(st.data())
def test_update_validator_survives_a_decoded_upload_of_any_shape(data):
    """What a client sends is decoded (``Upload.from_state``) then validated: a malformed
    state is a TypeError/KeyError/ValueError of the decoder or a rejection, never a
    wrong accept."""
    state = data.draw(st.dictionaries(
        st.sampled_from(["client_id", "architecture", "classes_seen", "num_examples",
                         "small_state", "fm_state", "payload", "metadata"]),
        st.one_of(st.none(), st.integers(-5, 10**12), st.text(max_size=4),
                  st.lists(st.integers(0, 9), max_size=3),
                  st.just({"0.weight": torch.zeros(3, 4)})), max_size=8))
    try:
        upload = Upload.from_state(state)
    except (KeyError, TypeError, ValueError):
        return
    reason = _validator(False).check(upload)
    assert reason is not None  # no decoded random state holds the right weights


# ------------------------------------------------------------- checkpoint loader

CHECKPOINT_STATE = {
    "position": {"task": 1, "round": 0}, "metrics": {"acc": [0.5, 0.25, None], "ok": True},
    "server": {"fusion": {"step": 3, "w": torch.linspace(-1, 1, 12).reshape(3, 4)}},
    "clients": [{"small": {"0.weight": torch.arange(12.0).reshape(3, 4),
                           "0.bias": torch.tensor([1.5, -2.0, 0.0]),
                           "steps": torch.tensor(7)}, "name": "mlp"},
                {"small": {"0.weight": torch.ones(3, 4, dtype=torch.float64),
                           "half": torch.zeros(2, dtype=torch.bfloat16)}, "name": "cnn"}],
    "rng": {"torch": torch.arange(16, dtype=torch.uint8), "python": [3, [1, 2, 3], None]},
}


def _same(a, b):
    if isinstance(a, torch.Tensor):
        return (isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
                and torch.equal(a.reshape(-1).view(torch.uint8),
                                b.reshape(-1).view(torch.uint8)))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(
            _same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, list) and len(a) == len(b) and all(map(_same, a, b))
    return type(a) is type(b) and a == b


@pytest.fixture(scope="module")
def checkpoint_files(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ckpt")
    checkpoint.save_checkpoint(run_dir, CHECKPOINT_STATE, task=1, round=0, step=3)
    folder = run_dir / checkpoint.CHECKPOINT_DIR
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert sorted(files) == ["latest.json", "round-0003.json", "round-0003.safetensors"]
    loaded = checkpoint.load_checkpoint(run_dir)
    assert _same({"format": checkpoint.FORMAT, **CHECKPOINT_STATE}, loaded)
    return files


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=st.sampled_from(["round-0003.safetensors", "round-0003.safetensors",
                               "round-0003.json", "latest.json"]),
       damage=st.sampled_from(["truncate", "flip", "flip"]), data=st.data())
def test_a_damaged_checkpoint_is_refused_or_read_unchanged(checkpoint_files, tmp_path,
                                                           target, damage, data):
    """Truncation or flipped bytes anywhere in a checkpoint's files: loading it is an
    FclkitError naming a file, or (a change that means nothing, e.g. JSON whitespace)
    exactly the saved state -- never a traceback, never a different state."""
    import tempfile

    blob = bytearray(checkpoint_files[target])
    if damage == "truncate":
        blob = blob[:data.draw(st.integers(0, len(blob) - 1), label="length")]
    else:
        for _ in range(data.draw(st.integers(1, 4), label="flips")):
            at = data.draw(st.integers(0, len(blob) - 1), label="at")
            blob[at] ^= data.draw(st.integers(1, 255), label="xor")
    with tempfile.TemporaryDirectory(dir=tmp_path) as run_dir:
        folder = Path(run_dir) / checkpoint.CHECKPOINT_DIR
        folder.mkdir()
        for name, content in checkpoint_files.items():
            (folder / name).write_bytes(bytes(blob) if name == target else content)
        try:
            loaded = checkpoint.load_checkpoint(run_dir)
        except FclkitError as exc:
            assert str(folder) in str(exc) and "\n" not in str(exc)
        else:
            assert _same({"format": checkpoint.FORMAT, **CHECKPOINT_STATE}, loaded), (
                "a damaged checkpoint was read as another state")


def test_state_files_from_two_saves_do_not_mix(tmp_path):
    from fclkit.serialization import load_state, save_state

    save_state({"w": torch.zeros(2), "n": 1}, tmp_path / "a.safetensors")
    save_state({"w": torch.ones(2), "n": 1}, tmp_path / "b.safetensors")
    (tmp_path / "a.json").write_bytes((tmp_path / "b.json").read_bytes())  # same skeleton
    (tmp_path / "a.safetensors").write_bytes((tmp_path / "b.safetensors").read_bytes())
    assert torch.equal(load_state(tmp_path / "a.safetensors")["w"], torch.ones(2))
    save_state({"w": torch.zeros(2), "n": 2}, tmp_path / "c.safetensors")
    (tmp_path / "c.json").write_text('{"w": {"__tensor__": "w"}, "n": 3}')
    with pytest.raises(FclkitError, match="do not match"):
        load_state(tmp_path / "c.safetensors")
