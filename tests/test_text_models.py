"""The small byte-level text models train on langid."""

import pytest
import torch

from fclkit.interfaces import StreamSpec
from fclkit_builtins.text.langid import LangIDBenchmark
from fclkit_builtins.text.models import TEXT_MODELS

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def task():
    opts = LangIDBenchmark.Options(languages="en,de,fr,ru", train_per_language=16,
                                   test_per_language=4, public_per_language=0)
    s = LangIDBenchmark(opts).build(StreamSpec(num_clients=1, num_tasks=1, seed=0,
                                               partition="iid", dirichlet_alpha=1.0,
                                               public_fraction=0.0))
    return s.input_spec, s.clients[0].tasks[0]


@pytest.mark.parametrize("cls", TEXT_MODELS, ids=lambda c: c.name)
def test_text_model_trains_and_reduces_loss(cls, task):
    spec, data = task
    assert cls.modalities == frozenset({"text"})
    torch.manual_seed(0)
    model = cls().build(spec, 4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = data.x_train, data.y_train
    losses = []
    for _ in range(20):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    with torch.no_grad():  # padding only at the end must not change a row's output
        wide = torch.nn.functional.pad(x[:3], (0, 16))
        assert torch.allclose(model(x[:3]), model(wide), atol=1e-5)


def test_text_models_refuse_images():
    from fclkit.errors import ConfigError
    from fclkit.stream import InputSpec

    with pytest.raises(ConfigError):
        TEXT_MODELS[0]().build(InputSpec("image", (1, 8, 8)), 10)
