"""Every built-in component passes the contract suite that plugin authors use."""

import importlib.util

import attrs
import pytest

from fclkit import testing
from fclkit.plugins import build_registry

REGISTRY = build_registry()
BUILTIN = {kind: sorted(n for n, e in REGISTRY.components[kind].items()
                        if e.distribution == "fclkit")
           for kind in REGISTRY.components}
OFFLINE_BENCHMARKS = ["digits", "mnist", "langid"]
# the zoo plugin registers ~80 torchvision models sharing one implementation: two stand for
# them here (tests/test_zoo.py checks more); building every one would take minutes
ZOO_CHECKED = ["tv-resnet18", "tv-mobilenet-v3-small",
               *(["timm"] if importlib.util.find_spec("timm") else [])]  # timm is optional
CLIENT_MODELS = [n for n in BUILTIN["client_model"]
                 if REGISTRY.get("client_model", n).plugin != "zoo" or n in ZOO_CHECKED]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", BUILTIN["strategy"])
def test_strategy_contract(name):
    testing.check_strategy(REGISTRY.get("strategy", name).cls)


@pytest.mark.parametrize("name", ["fedavg", "isolated", "fedprox", "feddf", "glfc",
                                  "target"])
def test_fusion_contract(name):
    testing.check_fusion(REGISTRY.get("fusion", name).cls)


@pytest.mark.parametrize("name", ["one-by-one", "fm-only", "feddf", "fm-fedavg"])
def test_fm_fusion_contract(name):
    fm = REGISTRY.get("foundation_model", "efficientnet-lite").cls()
    fm.setup(testing.INPUT_SPECS["image"], testing.NUM_CLASSES, "cpu")
    cls = REGISTRY.get("fusion", name).cls
    options = {"epochs": 1} if "epochs" in attrs.fields_dict(cls.Options) else {}
    testing.check_fusion(cls, options, foundation_model=fm)


@pytest.mark.parametrize("name", CLIENT_MODELS)
def test_client_model_contract(name):
    testing.check_client_model(REGISTRY.get("client_model", name).cls)


@pytest.mark.parametrize("name", OFFLINE_BENCHMARKS)
def test_benchmark_contract(name):
    testing.check_benchmark(REGISTRY.get("benchmark", name).cls)


LOGGER_OPTIONS = {"wandb": {"mode": "offline"}}  # no W&B account or network here


@pytest.mark.parametrize("name", BUILTIN["logger"])
def test_logger_contract(name, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    testing.check_logger(REGISTRY.get("logger", name).cls, LOGGER_OPTIONS.get(name))


def test_every_offline_builtin_is_covered():
    assert set(BUILTIN["fusion"]) == {"fedavg", "isolated", "one-by-one", "fm-only",
                                      "fedprox", "feddf", "fm-fedavg", "glfc", "target",
                                      "pilora"}
    assert set(OFFLINE_BENCHMARKS) <= set(BUILTIN["benchmark"])
    assert BUILTIN["logger"] == ["tensorboard", "wandb"]


def test_a_broken_strategy_fails_the_contract_with_a_reason():
    from conftest import PlainSGD

    class Forgetful(PlainSGD):
        name = "forgetful"

        def __init__(self, model, options, context):
            super().__init__(model, options, context)
            self.seen = 0

        def train_round(self, task, **kw):
            self.seen += 1  # kept between rounds but not in the state
            if self.seen > 2:
                import torch

                with torch.no_grad():
                    for p in self.model.parameters():
                        p.mul_(0.5)
            return super().train_round(task, **kw)

    with pytest.raises(AssertionError, match="diverged from the uninterrupted one"):
        testing.check_strategy(Forgetful)
