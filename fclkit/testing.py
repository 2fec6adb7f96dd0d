"""Contract checks a plugin author runs on their own components.

Each ``check_*`` function raises ``AssertionError`` with a readable message when
a component breaks a promise the runtime relies on; fclkit's own test suite
runs them on every built-in. In a plugin's tests::

    from fclkit.testing import check_strategy

    def test_my_strategy_keeps_its_promises():
        check_strategy(MyStrategy)

What is checked:

* strategies: train a small model on two tasks over several rounds; the state
  is made only of tensors and JSON values (it is saved without pickle); a
  strategy rebuilt from its state after task 1 continues exactly like the
  uninterrupted one; every ``extra_losses`` term reaches the loss;
* fusions: fuse uploads from several clients while another failed, and (unless
  the fusion needs one architecture) from different architectures; downloads go
  only to known clients; no uploads at all is not an error; the state saves;
* client models: build for each modality they declare and return
  ``(batch, num_classes)`` logits that a backward pass reaches;
* benchmarks: a small stream has the asked number of clients and tasks, labels
  inside the task's classes, and test splits;
* loggers: can run here (or say why not), take a run's configuration, scalars at
  several steps and a status, and can be started again in the same folder (a
  resumed run does that).
"""

from __future__ import annotations

import copy
from typing import Any

from .config import build_options
from .interfaces import FusionContext, StreamSpec, TrainContext
from .messages import Failure, FusionResult, RoundInfo, Upload
from .serialization import flatten_state, unflatten_state
from .stream import InputSpec, PublicSet, TaskData

NUM_CLASSES = 6
INPUT_SPECS = {
    "image": InputSpec("image", (1, 8, 8)),
    "tabular": InputSpec("tabular", (16,)),
    "text": InputSpec("text", (32,), {"encoding": "utf8-bytes", "vocab_size": 256}),
}


def _options(cls: Any, options: dict[str, Any] | None) -> Any:
    return build_options(cls.Options, options or {}, component=cls.__name__, table="options")


def _random_inputs(spec: InputSpec, n: int, generator: Any) -> Any:
    import torch

    if spec.modality == "text":
        return torch.randint(1, 128, (n, *spec.shape), generator=generator)
    return torch.rand((n, *spec.shape), generator=generator)


def make_tasks(spec: InputSpec | None = None, *, tasks: int = 2, per_class: int = 24,
               seed: int = 0) -> list[TaskData]:
    """Small learnable class-incremental tasks (each class has its own mean input)."""
    import torch

    spec = spec or INPUT_SPECS["image"]
    g = torch.Generator().manual_seed(seed)
    classes_per_task = NUM_CLASSES // tasks
    out = []
    for t in range(tasks):
        classes = tuple(range(t * classes_per_task, (t + 1) * classes_per_task))
        xs, ys = [], []
        for c in classes:
            x = _random_inputs(spec, per_class, g)
            if spec.modality != "text":
                x = 0.3 * x + (c + 1) / (NUM_CLASSES + 1)
            else:
                x[:, : c + 1] = 200 + c  # a class-specific prefix
            xs.append(x)
            ys.append(torch.full((per_class,), c, dtype=torch.long))
        x, y = torch.cat(xs), torch.cat(ys)
        cut = len(y) * 3 // 4
        perm = torch.randperm(len(y), generator=g)
        tr, te = perm[:cut], perm[cut:]
        out.append(TaskData(t, classes, x[tr], y[tr], x[te], y[te]))
    return out


def _mlp(spec: InputSpec) -> Any:
    import math

    import torch

    return torch.nn.Sequential(torch.nn.Flatten(),
                               torch.nn.Linear(math.prod(spec.shape), 32), torch.nn.ReLU(),
                               torch.nn.Linear(32, NUM_CLASSES))


def _context(**changes: Any) -> TrainContext:
    fields: dict[str, Any] = {"device": "cpu", "seed": 0, "num_classes": NUM_CLASSES,
                              "batch_size": 16, "lr": 0.05, "optimizer": "sgd",
                              "momentum": 0.9, "weight_decay": 0.0}
    fields.update(changes)
    return TrainContext(**fields)


def _train(strategy: Any, task: TaskData, rounds: int, extra_losses: tuple = ()) -> None:
    import torch

    for r in range(rounds):
        torch.manual_seed(1000 * task.task_id + r)  # the runtime seeds every round
        strategy.train_round(task, round_info=RoundInfo(task.task_id, r, rounds), epochs=1,
                             extra_losses=extra_losses)


def check_strategy(cls: Any, options: dict[str, Any] | None = None, *,
                   rounds: int = 2) -> None:
    """A ContinualStrategy trains, saves its state safely, and resumes exactly."""
    import torch

    spec = INPUT_SPECS["image"]
    tasks = make_tasks(spec)
    opts = _options(cls, options)

    torch.manual_seed(0)
    model = _mlp(spec)
    strategy = cls(model, opts, _context())
    _train(strategy, tasks[0], rounds)
    state = strategy.state_dict()
    try:
        skeleton, tensors = flatten_state(state)
    except TypeError as exc:
        raise AssertionError(f"{cls.__name__}.state_dict() holds something that cannot be "
                             f"saved safely: {exc}") from None
    saved_model = copy.deepcopy(model.state_dict())

    torch.manual_seed(0)
    twin_model = _mlp(spec)
    twin_model.load_state_dict(saved_model)
    twin = cls(twin_model, opts, _context())
    twin.load_state_dict(unflatten_state(copy.deepcopy(skeleton), dict(tensors)))

    _train(strategy, tasks[1], rounds)
    _train(twin, tasks[1], rounds)
    for (name, a), b in zip(model.state_dict().items(), twin_model.state_dict().values(),
                            strict=True):
        assert torch.allclose(a, b, atol=1e-6), (
            f"{cls.__name__}: a strategy restored from its state after task 1 diverged from "
            f"the uninterrupted one on {name}: state_dict() must hold everything kept "
            "between rounds")

    calls = []

    def probe(x: Any, y: Any, logits: Any) -> Any:
        calls.append(len(y))
        return logits.sum() * 0.0

    torch.manual_seed(0)
    fresh = cls(_mlp(spec), opts, _context())
    _train(fresh, tasks[0], 1, extra_losses=(probe,))
    assert calls, f"{cls.__name__} never called its extra_losses (the FM guidance needs it)"


def _uploads(build: Any, architectures: dict[int, str], classes: tuple[int, ...]) -> list:
    import torch

    out = []
    for cid, arch in architectures.items():
        torch.manual_seed(cid)
        model = build(arch)
        out.append(Upload(client_id=cid, architecture=arch, classes_seen=classes,
                          num_examples=10 + cid, small_state=model.state_dict()))
    return out


def check_fusion(cls: Any, options: dict[str, Any] | None = None, *,
                 foundation_model: Any = None, client_models: dict[str, Any] | None = None,
                 input_spec: InputSpec | None = None) -> None:
    """A KnowledgeFusion fuses what arrived, tolerates failures, and saves its state.

    :param foundation_model: a set-up FoundationModel, for fusions that need one.
    :param client_models: architecture name -> callable building a model; default:
        two small MLPs of different widths ("a", "b").
    """
    import torch

    spec = input_spec or INPUT_SPECS["image"]
    if cls.requires_foundation_model and foundation_model is None:
        raise AssertionError(f"{cls.__name__} needs a foundation model: pass one set up for "
                             "an input spec (check_fusion(cls, foundation_model=fm))")

    def default(width: int) -> Any:
        return lambda: torch.nn.Sequential(torch.nn.Flatten(),
                                           torch.nn.Linear(64, width), torch.nn.ReLU(),
                                           torch.nn.Linear(width, NUM_CLASSES))

    builders = client_models or {"a": default(16), "b": default(24)}
    names = list(builders)
    hetero = not cls.requires_homogeneous_models and len(names) > 1
    archs = {0: names[0], 1: names[1] if hetero else names[0], 2: names[0]}
    g = torch.Generator().manual_seed(0)
    public = PublicSet(x=_random_inputs(spec, 32, g), y=torch.randint(0, NUM_CLASSES, (32,)))
    fusion = cls(_options(cls, options))
    fusion.setup(FusionContext(
        client_ids=(0, 1, 2), architectures=archs, num_classes=NUM_CLASSES, device="cpu",
        seed=0, foundation_model=foundation_model, public=public,
        build_small_model=lambda arch: builders[arch]()))
    uploads = _uploads(lambda a: builders[a](), {0: archs[0], 1: archs[1]}, (0, 1, 2))
    result = fusion.fuse(RoundInfo(0, 0, 2), uploads, [Failure(2, "test: did not answer")])
    assert isinstance(result, FusionResult), f"{cls.__name__}.fuse must return a FusionResult"
    assert set(result.downloads) <= {0, 1, 2}, "downloads for unknown clients"
    for cid, d in result.downloads.items():
        if d.small_state is not None:
            own = builders[archs[cid]]().state_dict()
            assert set(d.small_state) == set(own), (
                f"client {cid}'s download does not fit its architecture {archs[cid]!r}")
    empty = fusion.fuse(RoundInfo(0, 1, 2), [], [Failure(k, "down") for k in (0, 1, 2)])
    assert isinstance(empty, FusionResult)
    try:
        flatten_state(fusion.state_dict())
    except TypeError as exc:
        raise AssertionError(f"{cls.__name__}.state_dict() cannot be saved safely: {exc}"
                             ) from None
    _check_client_side(cls, fusion.options)


def _check_client_side(cls: Any, options: Any) -> None:
    """The method's client half: a ClientSide built from the fusion's options, training a
    known part, with a state that saves without pickle."""
    from .interfaces import ClientSide

    side = cls.ClientSide
    assert isinstance(side, type) and issubclass(side, ClientSide), (
        f"{cls.__name__}.ClientSide must be a subclass of fclkit.ClientSide")
    assert side.trains and side.trains <= {"small", "fm"}, (
        f"{side.__name__}.trains must be a non-empty subset of {{'small', 'fm'}}")
    instance = side(options)
    try:
        flatten_state(instance.state_dict())
    except TypeError as exc:
        raise AssertionError(f"{side.__name__}.state_dict() cannot be saved safely: {exc}"
                             ) from None


def check_client_model(cls: Any, options: dict[str, Any] | None = None) -> None:
    """A ClientModel builds for each modality it declares and returns trainable logits."""
    import torch

    for modality in sorted(cls.modalities):
        spec = INPUT_SPECS.get(modality)
        if spec is None:
            continue
        model = cls(_options(cls, options)).build(spec, NUM_CLASSES)
        x = _random_inputs(spec, 5, torch.Generator().manual_seed(0))
        logits = model(x)
        assert tuple(logits.shape) == (5, NUM_CLASSES), (
            f"{cls.__name__} on {modality} {spec.shape} returned {tuple(logits.shape)}, "
            f"expected (5, {NUM_CLASSES})")
        logits.sum().backward()
        assert any(p.grad is not None for p in model.parameters()), (
            f"{cls.__name__}: no parameter receives a gradient")


def check_benchmark(cls: Any, options: dict[str, Any] | None = None, *,
                    clients: int = 2, tasks: int = 2) -> None:
    """A Benchmark builds a stream of the asked shape with consistent labels."""
    bench = cls(_options(cls, options))
    stream = bench.build(StreamSpec(num_clients=clients, num_tasks=tasks, seed=0,
                                    partition="iid", dirichlet_alpha=1.0, public_fraction=0.1))
    assert len(stream.clients) == clients, "wrong number of clients"
    for client in stream.clients:
        assert len(client.tasks) == tasks, "wrong number of tasks"
        for task in client.tasks:
            assert len(task.y_train) > 0 and len(task.y_test) > 0, "empty task"
            assert set(task.y_train.tolist()) <= set(task.classes), "label outside the task"
            assert tuple(task.x_train.shape[1:]) == stream.input_spec.shape, (
                "inputs do not match the stream's input_spec")


def check_logger(cls: Any, options: dict[str, Any] | None = None) -> None:
    """An ExperimentLogger starts, logs scalars, finishes, and restarts in the same folder."""
    import tempfile
    from pathlib import Path

    from .config import ExperimentConfig

    reason = cls.unavailable_reason()
    assert reason is None or (isinstance(reason, str) and reason), (
        f"{cls.__name__}.unavailable_reason() must return None or a message saying what "
        f"is missing, not {reason!r}")
    assert reason is None, f"{cls.__name__} cannot be checked here: {reason}"
    for flag in ("enabled_by_default", "needs_run_dir"):
        assert isinstance(getattr(cls, flag), bool), f"{cls.__name__}.{flag} must be a bool"
    config = ExperimentConfig().to_dict()
    with tempfile.TemporaryDirectory(prefix="fclkit-logger-") as tmp:
        run_dir = Path(tmp)
        for status in ("failed", "finished"):  # the second start is a resumed run
            logger = cls(_options(cls, options))
            logger.start(run_dir, config)
            logger.log_metrics({"train/loss": 1.5, "train/clients_ok": 3.0}, 1)
            logger.log_metrics({"accuracy/small/seen_tasks": 0.5,
                                "accuracy/small/task_1": 0.5}, 1)
            logger.log_metrics({"train/loss": 0.75}, 2)
            logger.finish(status)
