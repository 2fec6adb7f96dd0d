"""Small models from model zoos: every torchvision classification model (``tv-*``) and
timm's (``timm``, when installed), adapted to the input and mixed with the built-ins."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from fclkit import testing
from fclkit.errors import ConfigError, FclkitError
from fclkit.plugins import build_registry
from fclkit.stream import InputSpec

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from fclkit_builtins.zoo import models as zoo  # noqa: E402
from fclkit_builtins.zoo import names, nets  # noqa: E402

DIGITS = InputSpec("image", (1, 8, 8))
CIFAR = InputSpec("image", (3, 32, 32))
REPRESENTATIVE = ["tv-resnet18", "tv-mobilenet-v3-small"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_names_literal_matches_the_installed_torchvision():
    import torchvision

    installed = names.installed_torchvision_models()
    assert names.TORCHVISION_MODELS == installed, (
        f"fclkit_builtins/zoo/names.py lists torchvision's models, and the installed "
        f"torchvision {torchvision.__version__} has others: new "
        f"{sorted(set(installed) - set(names.TORCHVISION_MODELS))}, gone "
        f"{sorted(set(names.TORCHVISION_MODELS) - set(installed))}; regenerate it with "
        "`python -m fclkit_builtins.zoo.names`")


def test_every_torchvision_model_is_registered_as_one_class_sharing_the_options():
    registry = build_registry()
    assert not registry.broken, registry.broken
    zoo_names = {n for n, e in registry.components["client_model"].items() if e.plugin == "zoo"}
    expected = {"tv-" + n.replace("_", "-") for n in names.TORCHVISION_MODELS}
    assert expected <= zoo_names and {"tv-resnet18", "tv-mobilenet-v3-small"} <= zoo_names
    assert zoo_names - expected <= {"timm"}
    for name in expected:
        cls = registry.get("client_model", name).cls
        assert issubclass(cls, zoo.TorchvisionModel) and cls.Options is zoo.ZooOptions
        assert cls.tv_name.replace("_", "-") == name[3:]
        assert getattr(zoo, cls.__name__) is cls  # importable by name (engines pickle it)
    assert registry.get("client_model", "timm").cls is zoo.TimmModel  # with or without timm


def test_timm_without_timm_says_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    with pytest.raises(FclkitError, match="needs timm, which is not installed") as info:
        zoo.TimmModel().build(DIGITS, 5)
    assert info.value.hint == "pip install timm"


def test_listing_plugins_imports_neither_torchvision_nor_timm():
    code = ("import sys; from fclkit.plugins import build_registry; r = build_registry(); "
            "assert 'tv-resnet18' in r.components['client_model']; "
            "print(sorted(m for m in ('torch', 'torchvision', 'timm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def _train_step(net, spec, n):
    net.train()
    logits = net(torch.rand(n, *spec.shape))
    assert tuple(logits.shape) == (n, 5)
    logits.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


@pytest.mark.parametrize("spec", [DIGITS, CIFAR], ids=["digits-1x8x8", "rgb-3x32x32"])
@pytest.mark.parametrize("name", REPRESENTATIVE)
def test_builds_for_digits_and_rgb_and_trains(name, spec):
    net = build_registry().get("client_model", name).cls().build(spec, 5)
    _train_step(net, spec, 4)
    _train_step(net, spec, 1)  # the last mini-batch of an epoch can hold one example
    net.eval()
    with torch.no_grad():
        assert tuple(net(torch.rand(3, *spec.shape)).shape) == (3, 5)


@pytest.mark.parametrize("tv_name,spec,seen", [
    ("squeezenet1_1", DIGITS, (17, 17)),     # upsampled to its minimum size
    ("resnet18", DIGITS, (8, 8)),            # takes 8x8 as it is
    ("googlenet", CIFAR, (32, 32)),          # auxiliary heads off: plain logits
])
def test_inputs_below_the_minimum_size_are_upsampled(tv_name, spec, seen):
    net = zoo.torchvision_class(tv_name)().build(spec, 5)
    shapes = []
    net.net.register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape)))
    _train_step(net, spec, 2)
    assert shapes == [(2, spec.shape[0], *seen)]


def test_min_size_option_and_fixed_size_architectures():
    net = zoo.torchvision_class("resnet18")(zoo.ZooOptions(min_size=40)).build(DIGITS, 5)
    assert net.min_size == 40 and net.fixed_size is None
    wrapper = nets.ZooNet(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 5)),
                          fixed_size=16, repeat_channels=3)
    assert wrapper(torch.rand(2, 1, 8, 8)).shape == (2, 5)    # repeated, upsampled
    assert wrapper(torch.rand(2, 1, 40, 24)).shape == (2, 5)  # resized down too


def test_adapting_the_first_conv_equals_repeating_a_grey_input():
    import torchvision

    ref = torchvision.models.resnet18(num_classes=5).eval()
    adapted = torchvision.models.resnet18(num_classes=5).eval()
    adapted.load_state_dict(ref.state_dict())
    nets.adapt_first_conv(adapted, 1)
    assert adapted.conv1.in_channels == 1
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(adapted(x), ref(x.repeat(1, 3, 1, 1)), atol=1e-4)
    nets.adapt_first_conv(ref, 4)
    assert ref.conv1.weight.shape[1] == 4


def test_channels_repeat_option():
    cls = zoo.torchvision_class("mobilenet_v3_small")
    net = cls(zoo.ZooOptions(channels="repeat")).build(DIGITS, 5)
    assert net.repeat_channels == 3 and net.net.features[0][0].in_channels == 3
    _train_step(net, DIGITS, 2)
    with pytest.raises(ConfigError, match="use 'adapt'"):
        cls(zoo.ZooOptions(channels="repeat")).build(InputSpec("image", (2, 8, 8)), 5)
    with pytest.raises(ConfigError, match="takes images"):
        cls().build(InputSpec("tabular", (16,)), 5)


def test_pretrained_offline_without_the_cache_fails_at_once_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty torch hub cache
    monkeypatch.setattr(nets.network, "reachable", lambda url, timeout: False)
    start = time.monotonic()
    with pytest.raises(FclkitError) as info:
        zoo.torchvision_class("resnet18")(zoo.ZooOptions(pretrained=True)).build(DIGITS, 5)
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert "\n" not in message and "pretrained = true" in message
    assert "not in the torch hub cache" in message and "cannot be reached" in message
    assert "pretrained=false" in (info.value.hint or "")


def test_pretrained_offline_through_the_cli_is_one_error_line(tmp_path, monkeypatch):
    from fclkit.cli import app

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(nets.network, "reachable", lambda url, timeout: False)
    res = CliRunner().invoke(app, ["run", "-q", "--clients", "2", "--tasks", "2",
                                   "--rounds", "1", "--fusion", "isolated", "--loggers", "none",
                                   "--client-models", "tv-resnet18", "--model-opt",
                                   "pretrained=true", "--output", str(tmp_path / "out")])
    assert res.exit_code == 1, res.output
    lines = res.output.strip().splitlines()
    assert lines[0].startswith("error: client model 'tv-resnet18': pretrained = true")
    assert "Traceback" not in res.output and len(lines) <= 2


def test_pretrained_weights_come_from_the_torch_hub_cache(tmp_path, monkeypatch):
    import torchvision

    weights = torchvision.models.get_model_weights("mobilenet_v3_small").DEFAULT
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = nets.torch_hub_file(weights.url)
    path.parent.mkdir(parents=True)
    torch.manual_seed(3)
    saved = torchvision.models.mobilenet_v3_small().state_dict()  # stands for the download
    torch.save(saved, path)

    def no_network(url, timeout):
        raise AssertionError("the network was asked although the weights are cached")

    monkeypatch.setattr(nets.network, "reachable", no_network)
    net = zoo.torchvision_class("mobilenet_v3_small")(zoo.ZooOptions(pretrained=True)).build(
        DIGITS, 5)
    state = net.net.state_dict()
    first = "features.0.0.weight"
    assert torch.allclose(state[first], saved[first].sum(1, keepdim=True))
    assert torch.equal(state["features.1.block.0.0.weight"],
                       saved["features.1.block.0.0.weight"])
    assert state["classifier.3.weight"].shape[0] == 5
    _train_step(net, DIGITS, 2)


def test_contract_on_representatives():
    for name in REPRESENTATIVE:
        testing.check_client_model(build_registry().get("client_model", name).cls)


def test_timm_model_builds_when_timm_is_installed(tmp_path, monkeypatch):
    pytest.importorskip("timm")
    cls = build_registry().get("client_model", "timm").cls
    net = cls(cls.Options(model="resnet18")).build(DIGITS, 5)
    _train_step(net, DIGITS, 3)
    _train_step(net, DIGITS, 1)
    with pytest.raises(ConfigError, match="not a timm model"):
        cls(cls.Options(model="no-such-net")).build(DIGITS, 5)
    monkeypatch.setattr(nets, "_timm_cached_file", lambda cfg: None)  # nothing cached
    monkeypatch.setattr(nets.network, "reachable", lambda url, timeout: False)
    start = time.monotonic()
    with pytest.raises(FclkitError, match="pretrained = true needs timm's resnet18 weights"):
        cls(cls.Options(model="resnet18", pretrained=True)).build(DIGITS, 5)
    assert time.monotonic() - start < 5


def test_timm_pretrained_weights_come_from_the_cache(tmp_path, monkeypatch):
    timm = pytest.importorskip("timm")
    torch.manual_seed(4)
    saved = timm.create_model("resnet18").state_dict()  # stands for the cached download
    torch.save(saved, tmp_path / "pytorch_model.bin")
    monkeypatch.setattr(nets, "_timm_cached_file", lambda cfg: tmp_path / "pytorch_model.bin")
    monkeypatch.setattr(nets.network, "reachable", lambda url, timeout: pytest.fail("asked"))
    cls = build_registry().get("client_model", "timm").cls
    net = cls(cls.Options(model="resnet18", pretrained=True)).build(DIGITS, 5)
    state = net.net.state_dict()
    assert torch.equal(state["layer1.0.conv1.weight"], saved["layer1.0.conv1.weight"])
    assert state["fc.weight"].shape[0] == 5 and state["conv1.weight"].shape[1] == 1


def _run(tmp_path, fusion, models="tv-resnet18,tv-mobilenet-v3-small,cnn"):
    from fclkit.cli import app

    out = tmp_path / fusion
    res = CliRunner().invoke(app, ["run", "--client-models", models, "--fusion", fusion,
                                   "--clients", "3", "--tasks", "2", "--rounds", "1",
                                   "--epochs", "1", "--threads", "1", "-q", "--loggers", "none",
                                   "--output", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return out


@pytest.mark.slow
@pytest.mark.parametrize("fusion", ["isolated", "one-by-one"])
def test_zoo_models_mix_with_builtins_in_one_heterogeneous_fleet(tmp_path, fusion):
    import json

    out = _run(tmp_path, fusion)
    metrics = [json.loads(p.read_text()) for p in out.rglob("metrics.json")]
    assert metrics, sorted(str(p) for p in out.rglob("*"))
