"""Every small image and text model learns at the shared local-training defaults.

The defaults (SGD, lr 0.05, momentum 0.9, batch 16) are the same for every
architecture of a heterogeneous run, so each architecture has to be trainable at
them. These tests train briefly on real data (scikit-learn's digits, the langid
sentences) and ask for clearly better than chance and finite weights. The
class-incremental one trains two tasks one after the other with a small replay
buffer: the large gradients at the task switch used to leave ``lenet`` predicting a
single class for good.
"""

import pytest
import torch
import torch.nn.functional as F

from fclkit.interfaces import StreamSpec
from fclkit.stream import InputSpec
from fclkit_builtins.digits.benchmark import load_digits
from fclkit_builtins.small_models.models import MLP
from fclkit_builtins.text.langid import LangIDBenchmark
from fclkit_builtins.text.models import TEXT_MODELS
from fclkit_builtins.vision.models import IMAGE_MODELS

LR, MOMENTUM, BATCH = 0.05, 0.9, 16  # fclkit's defaults (fclkit.config)


pytestmark = pytest.mark.usefixtures("one_thread")


def _train(model, x, y, epochs, generator, optimizer=None):
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for i in range(0, len(x), BATCH):
            batch = order[i:i + BATCH]
            loss = F.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return optimizer


def _accuracy(model, x, y):
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def _finite(model):
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _train_tasks(model, x, y, tasks, generator, per_task=None):
    """Train on each task's classes in turn (``per_task`` examples of them, all if None),
    one optimizer throughout, as a client's Avalanche strategy keeps it, replaying 10
    examples of every earlier task."""
    optimizer = None
    memory_x, memory_y = x[:0], y[:0]
    for classes in tasks:
        pick = torch.nonzero(torch.isin(y, torch.tensor(classes))).flatten()
        pick = pick[torch.randperm(len(pick), generator=generator)[:per_task]]
        optimizer = _train(model, torch.cat([x[pick], memory_x]), torch.cat([y[pick], memory_y]),
                           15, generator, optimizer)
        memory_x = torch.cat([memory_x, x[pick[:10]]])
        memory_y = torch.cat([memory_y, y[pick[:10]]])


@pytest.fixture(scope="module")
def digits():
    images, target = load_digits()
    x = torch.tensor(images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    return x[order[:1400]], y[order[:1400]], x[order[1400:]], y[order[1400:]]


@pytest.mark.parametrize("cls", IMAGE_MODELS, ids=lambda c: c.name)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_image_model_survives_a_task_switch_at_the_defaults(cls, seed, digits):
    """Task 1: digits 0-1; task 2: digits 2-3 plus a few replayed 0-1 examples (90 new
    examples per task, 15 epochs each, one optimizer throughout, as a client's
    Avalanche strategy keeps it). The model must learn the second task (a collapsed
    model predicts one class: ~50% on it) and keep some of the first (chance on the
    four classes: 25%)."""
    x, y, xt, yt = digits
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = cls().build(InputSpec("image", (1, 8, 8)), 10)
    _train_tasks(model, x, y, ((0, 1), (2, 3)), generator, per_task=90)
    assert _finite(model)
    new = torch.isin(yt, torch.tensor([2, 3]))
    seen = torch.isin(yt, torch.tensor([0, 1, 2, 3]))
    accuracy_new = _accuracy(model, xt[new], yt[new])
    accuracy_seen = _accuracy(model, xt[seen], yt[seen])
    assert accuracy_new > 0.8 and accuracy_seen > 0.4, (
        f"{cls.name}: {accuracy_new:.1%} on task 2, {accuracy_seen:.1%} on both tasks")


@pytest.fixture(scope="module")
def langid():
    options = LangIDBenchmark.Options(train_per_language=60, test_per_language=30,
                                      public_per_language=0)
    stream = LangIDBenchmark(options).build(StreamSpec(
        num_clients=1, num_tasks=1, seed=0, partition="iid", dirichlet_alpha=1.0,
        public_fraction=0.0))
    return stream.input_spec, stream.clients[0].tasks[0]


@pytest.mark.parametrize("cls", TEXT_MODELS, ids=lambda c: c.name)
def test_text_model_learns_ten_languages_at_the_defaults(cls, langid):
    """Five epochs on 60 sentences per language (chance: 10%)."""
    spec, task = langid
    torch.manual_seed(0)
    model = cls().build(spec, 10)
    _train(model, task.x_train, task.y_train, 5, torch.Generator().manual_seed(0))
    assert _finite(model)
    accuracy = _accuracy(model, task.x_test, task.y_test)
    assert accuracy > 0.5, f"{cls.name}: {accuracy:.1%}"


def _mlp_on_784_inputs(seed, digits):
    """Accuracy on the six classes of three 2-class tasks, every training example of
    each, 15 epochs a task, 10 replayed examples per old task, 28x28 inputs."""
    x, y, xt, yt = (F.interpolate(t, size=(28, 28), mode="bilinear") if t.dim() == 4 else t
                    for t in digits)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = MLP().build(InputSpec("image", (1, 28, 28)), 10)
    _train_tasks(model, x, y, ((0, 1), (2, 3), (4, 5)), generator)
    assert _finite(model)
    seen = torch.isin(yt, torch.arange(6))
    return _accuracy(model, xt[seen], yt[seen])


def test_mlp_keeps_learning_on_784_inputs_at_the_defaults(digits):
    """The MLP on as many inputs as Fashion-MNIST's (digits upsampled to 28x28), seeds
    0-2. The plain ReLU MLP (``norm = "none"``) ends at 54 / 35 / 67 % (mean 52), the
    default layer-normalised one at 66 / 67 / 80 %."""
    accuracies = [_mlp_on_784_inputs(seed, digits) for seed in (0, 1, 2)]
    assert min(accuracies) > 0.55 and sum(accuracies) / 3 > 0.62, (
        "mlp: " + ", ".join(f"{a:.1%}" for a in accuracies) + " on the six classes")
