"""The Avalanche-backed strategies and benchmarks of ``fclkit_builtins.avalanche``.

Data: scikit-learn's 8x8 digits cut into 3 class-incremental tasks; model: a
small MLP. Everything runs on the CPU in a few seconds.
"""

from __future__ import annotations

import copy
import json
import os
import struct
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import fclkit_builtins.avalanche
from fclkit.config import build_options
from fclkit.errors import BenchmarkUnavailableError, ConfigError
from fclkit.interfaces import StreamSpec, TrainContext
from fclkit.messages import RoundInfo
from fclkit.plugins import build_registry
from fclkit.serialization import flatten_state, unflatten_state
from fclkit.stream import TaskData
from fclkit_builtins.avalanche import strategies as S
from fclkit_builtins.avalanche.benchmarks import BENCHMARKS, SplitMNIST

GROUPS = ((0, 1, 2), (3, 4, 5), (6, 7, 8, 9))
CONTEXT = TrainContext(device="cpu", seed=0, num_classes=10, batch_size=32, lr=0.05,
                       optimizer="sgd", momentum=0.9, weight_decay=0.0)
BY_NAME = {cls.name: cls for cls in S.STRATEGIES}


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny models: one thread is fastest and immune to OpenMP spin-waits on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tasks() -> list[TaskData]:
    from digits_tasks import digits_tasks

    return digits_tasks(GROUPS)


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


@torch.no_grad()
def accuracy(model: nn.Module, task: TaskData) -> float:
    model.eval()
    return (model(task.x_test).argmax(1) == task.y_test).float().mean().item()


def train_task(strategy, task, *, rounds=1, epochs=1, seed=0, extra_losses=()):
    reports = []
    for r in range(rounds):
        torch.manual_seed(seed * 100 + r)  # the caller seeds before every round
        reports.append(strategy.train_round(task, round_info=RoundInfo(task.task_id, r, rounds),
                                            epochs=epochs, extra_losses=extra_losses))
    return reports


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                 b.state_dict().values(), strict=True))


def plugin_of(strategy, type_name: str):
    (plugin,) = [p for p in strategy.avalanche_strategy.plugins
                 if type(p).__name__ == type_name]
    return plugin


# ------------------------------------------------------------------ registration


def test_import_is_light():
    code = ("import sys, fclkit_builtins.avalanche; "
            "heavy = [m for m in ('torch', 'avalanche', 'torchvision') if m in sys.modules]; "
            "assert not heavy, heavy")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


def test_hooks_register_every_strategy_and_benchmark():
    reg = build_registry([fclkit_builtins.avalanche], load_entry_points=False)
    assert set(reg.names("strategy")) >= {
        "naive", "ewc", "lwf", "replay", "si", "mas", "agem", "gem", "der"}
    assert set(reg.names("benchmark")) >= {
        "split-mnist", "split-fmnist", "split-cifar10", "split-cifar100"}
    assert not reg.broken, reg.broken
    import attrs

    for entry in reg.all():
        assert entry.cls.description and "\n" not in entry.cls.description
        for field in attrs.fields(entry.cls.Options):
            assert field.metadata.get("help"), (entry.name, field.name)
        entry.cls.Options()  # defaults are valid


# ------------------------------------------------------------- state / restore

VARIANTS = [pytest.param(cls, None, id=cls.name) for cls in S.STRATEGIES] + [
    pytest.param(S.ReplayStrategy, S.ReplayStrategy.Options(
        storage_policy="class-balanced", mem_size=60), id="replay-class-balanced"),
    pytest.param(S.ReplayStrategy, S.ReplayStrategy.Options(
        storage_policy="reservoir", mem_size=60), id="replay-reservoir"),
    pytest.param(S.EWCStrategy, S.EWCStrategy.Options(mode="online"), id="ewc-online"),
]


def _roundtrip(state):
    """Through fclkit's safe serialisation format: tensors + JSON, nothing pickled."""
    skeleton, tensors = flatten_state(state)
    return unflatten_state(json.loads(json.dumps(skeleton)),
                           {k: v.clone() for k, v in tensors.items()})


@pytest.mark.parametrize(("cls", "options"), VARIANTS)
def test_restored_strategy_continues_exactly(tasks, cls, options):
    model = make_model()
    strategy = cls(model, options, CONTEXT)
    train_task(strategy, tasks[0], rounds=2, seed=1)

    model_state = copy.deepcopy(model.state_dict())
    state = copy.deepcopy(strategy.state_dict())
    _roundtrip(state)  # only tensors and JSON values
    assert not set(model.state_dict()) & set(state), "the model's own weights are not in it"

    model2 = make_model(seed=123)  # different init: everything must come from the states
    model2.load_state_dict(model_state)
    restored = cls(model2, options, CONTEXT)
    restored.load_state_dict(_roundtrip(state))

    for s in (strategy, restored):
        train_task(s, tasks[1], rounds=2, seed=2)
    assert same_weights(model, model2)
    assert [accuracy(model, t) for t in tasks] == [accuracy(model2, t) for t in tasks]


@pytest.mark.parametrize("name", ["replay", "si", "agem", "der", "lwf"])
def test_restore_in_the_middle_of_a_task(tasks, name):
    cls = BY_NAME[name]
    model = make_model()
    strategy = cls(model, None, CONTEXT)
    train_task(strategy, tasks[0], rounds=2, seed=1)
    torch.manual_seed(7)
    strategy.train_round(tasks[1], round_info=RoundInfo(1, 0, 2), epochs=1)

    model2 = make_model()
    model2.load_state_dict(copy.deepcopy(model.state_dict()))
    restored = cls(model2, None, CONTEXT)
    restored.load_state_dict(_roundtrip(copy.deepcopy(strategy.state_dict())))
    for s in (strategy, restored):
        torch.manual_seed(8)
        s.train_round(tasks[1], round_info=RoundInfo(1, 1, 2), epochs=1)
        train_task(s, tasks[2], rounds=1, seed=3)
    assert same_weights(model, model2)


def test_state_of_a_mismatched_strategy_is_refused(tasks):
    from fclkit.errors import FclkitError

    ewc = S.EWCStrategy(make_model(), None, CONTEXT)
    with pytest.raises(FclkitError, match="does not match"):
        S.ReplayStrategy(make_model(), None, CONTEXT).load_state_dict(ewc.state_dict())


# ------------------------------------------------- equivalence with Avalanche


def _direct(name, model, epochs):
    from avalanche.training.plugins import EvaluationPlugin
    from avalanche.training.supervised import EWC, LwF, Replay

    cls, kwargs = {
        "ewc": (EWC, {"ewc_lambda": 50.0, "mode": "separate", "decay_factor": None}),
        "lwf": (LwF, {"alpha": 2.0, "temperature": 2.0}),
        "replay": (Replay, {"mem_size": 120}),
    }[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(model=model, criterion=nn.CrossEntropyLoss(),
                   optimizer=torch.optim.SGD(model.parameters(), lr=CONTEXT.lr,
                                             momentum=CONTEXT.momentum),
                   train_mb_size=CONTEXT.batch_size, train_epochs=epochs,
                   eval_mb_size=CONTEXT.batch_size, device="cpu",
                   evaluator=EvaluationPlugin(loggers=[]), eval_every=-1, **kwargs)


@pytest.mark.parametrize(("name", "options"), [
    ("ewc", S.EWCStrategy.Options(ewc_lambda=50.0)),
    ("lwf", S.LwFStrategy.Options(alpha=2.0, temperature=2.0)),
    ("replay", S.ReplayStrategy.Options(mem_size=120)),
])
def test_one_round_per_task_equals_avalanche_driven_directly(tasks, name, options):
    from avalanche.benchmarks import tensors_benchmark

    epochs = 2
    model_f, model_d = make_model(), make_model()
    fcl = BY_NAME[name](model_f, options, CONTEXT)
    direct = _direct(name, model_d, epochs)
    bench = tensors_benchmark(
        train_tensors=[(t.x_train, t.y_train) for t in tasks],
        test_tensors=[(t.x_test, t.y_test) for t in tasks], task_labels=[0, 0, 0])
    for t, task in enumerate(tasks):
        train_task(fcl, task, rounds=1, epochs=epochs, seed=t)
        torch.manual_seed(t * 100)
        with warnings.catch_warnings(record=True):  # Avalanche's own deprecation notices
            direct.train(bench.train_stream[t])
    acc_f = np.mean([accuracy(model_f, t) for t in tasks])
    acc_d = np.mean([accuracy(model_d, t) for t in tasks])
    assert abs(acc_f - acc_d) <= 0.01
    assert same_weights(model_f, model_d)  # in fact identical


# ---------------------------------------------------------------- forgetting


def _accuracy_matrix(cls, tasks, options=None):
    model = make_model()
    strategy = cls(model, options, CONTEXT)
    acc = np.zeros((len(tasks), len(tasks)))
    for t, task in enumerate(tasks):
        train_task(strategy, task, rounds=2, epochs=2, seed=10 + t)
        acc[t] = [accuracy(model, other) for other in tasks]
    return acc


def _average_forgetting(acc):
    last = len(acc) - 1
    return float(np.mean([acc[:last, j].max() - acc[last, j] for j in range(last)]))


def test_replay_forgets_less_than_naive(tasks):
    naive = _accuracy_matrix(S.NaiveStrategy, tasks)
    replay = _accuracy_matrix(S.ReplayStrategy, tasks)
    assert _average_forgetting(replay) < _average_forgetting(naive) - 0.3
    assert replay[-1].mean() > naive[-1].mean() + 0.2


# ------------------------------------------------------ rounds and consolidation


class CallCounter:
    """An extra Avalanche plugin (duck-typed) that counts the callbacks it gets."""

    def __init__(self):
        self.calls: dict[str, int] = {}

    def _count(self, name):
        self.calls[name] = self.calls.get(name, 0) + 1

    def before_training(self, strategy, **kw):
        self._count("before_training")

    def before_training_exp(self, strategy, **kw):
        self._count("before_training_exp")

    def after_training_exp(self, strategy, **kw):
        self._count("after_training_exp")

    def after_update(self, strategy, **kw):
        self._count("after_update")


def test_consolidation_happens_only_at_the_last_round(tasks):
    counter = CallCounter()
    strategy = S.EWCStrategy(make_model(), None, CONTEXT, plugins=[counter])
    ewc, clock = plugin_of(strategy, "EWCPlugin"), strategy.avalanche_strategy.clock

    reports = []
    for r in range(3):
        torch.manual_seed(r)
        reports.append(strategy.train_round(tasks[0], round_info=RoundInfo(0, r, 3), epochs=1))
        if r < 2:  # not the last round yet: nothing consolidated
            assert len(ewc.importances) == 0 and clock.train_exp_counter == 0
    assert list(ewc.importances) == [0] and clock.train_exp_counter == 1

    # each round is one Avalanche train() call; one experience spans the task's rounds
    assert counter.calls["before_training"] == 3
    assert counter.calls["before_training_exp"] == 1
    assert counter.calls["after_training_exp"] == 1
    assert counter.calls["after_update"] == sum(r.steps for r in reports)
    report = reports[-1]
    assert report.num_examples == tasks[0].num_train
    assert report.steps == -(-tasks[0].num_train // CONTEXT.batch_size)
    assert np.isfinite(report.loss) and report.loss > 0


def test_lwf_keeps_its_previous_model_from_the_last_round_only(tasks):
    strategy = S.LwFStrategy(make_model(), None, CONTEXT)
    lwf = plugin_of(strategy, "LwFPlugin").lwf
    torch.manual_seed(0)
    strategy.train_round(tasks[0], round_info=RoundInfo(0, 0, 2), epochs=1)
    assert lwf.prev_model is None
    torch.manual_seed(1)
    strategy.train_round(tasks[0], round_info=RoundInfo(0, 1, 2), epochs=1)
    assert lwf.prev_model is not None and lwf.prev_classes_by_task[0] == {0, 1, 2}
    assert lwf.prev_model is not strategy.model


def test_weights_loaded_between_rounds_are_trained_in_place(tasks):
    model = make_model()
    strategy = S.ReplayStrategy(model, None, CONTEXT)
    params = dict(model.named_parameters())
    train_task(strategy, tasks[0], rounds=1)
    optimized = {id(p) for g in strategy.avalanche_strategy.optimizer.param_groups
                 for p in g["params"]}
    assert optimized == {id(p) for p in params.values()}

    server = make_model(seed=99)  # e.g. FedAvg's download, loaded into the same module
    model.load_state_dict(server.state_dict())
    first = []

    def record(x, y, logits):
        if not first:
            with torch.no_grad():
                first.append(torch.allclose(logits, server(x)))
        return logits.sum() * 0.0

    train_task(strategy, tasks[1], rounds=1, extra_losses=[record])
    assert first == [True]  # the round started from the loaded weights
    assert strategy.avalanche_strategy.model is model
    assert dict(model.named_parameters()) == params  # the very same Parameter objects
    assert not same_weights(model, server)


# ------------------------------------------------------------ composability


def test_extra_losses_are_added_to_every_minibatch_and_backpropagated(tasks):
    seen = []

    def shrink_logits(x, y, logits):
        seen.append((x.shape, y.shape, logits.shape, logits.requires_grad))
        return 50.0 * logits.pow(2).mean()

    plain, guided = make_model(), make_model()
    s_plain = S.EWCStrategy(plain, None, CONTEXT)
    s_guided = S.EWCStrategy(guided, None, CONTEXT)
    r_plain = train_task(s_plain, tasks[0], rounds=1)[0]
    r_guided = train_task(s_guided, tasks[0], rounds=1, extra_losses=[shrink_logits])[0]

    assert len(seen) == r_guided.steps > 0
    assert all(xs[0] == ys[0] == ls[0] and ls[1] == 10 and grad for xs, ys, ls, grad in seen)
    assert not same_weights(plain, guided)
    with torch.no_grad():  # the gradient of the extra term flowed: logits were pushed to 0
        norm = {m: m(tasks[0].x_train).pow(2).mean().item() for m in (plain, guided)}
    assert norm[guided] < 0.5 * norm[plain]
    assert r_guided.loss != r_plain.loss

    # the terms apply to the round they were given to only
    seen.clear()
    train_task(s_guided, tasks[0], rounds=1)
    assert not seen


@pytest.mark.parametrize("name", ["naive", "replay", "der", "gem"])
def test_any_strategy_composes_with_extra_losses(tasks, name):
    calls = []

    def term(x, y, logits):
        calls.append(1)
        return 0.0 * logits.sum()

    strategy = BY_NAME[name](make_model(), None, CONTEXT)
    for t in range(2):
        report = train_task(strategy, tasks[t], rounds=1, seed=t, extra_losses=[term])[0]
        assert len(calls) == report.steps
        calls.clear()


def test_extra_plugins_by_keyword_and_by_subclass(tasks):
    from avalanche.core import SupervisedPlugin

    class Counting(SupervisedPlugin):
        def __init__(self):
            super().__init__()
            self.iterations = 0

        def after_training_iteration(self, strategy, **kwargs):
            self.iterations += 1

        def state_dict(self):  # extra plugins may take part in the strategy state
            return {"iterations": self.iterations}

        def load_state_dict(self, state):
            self.iterations = state["iterations"]

    by_keyword = Counting()
    strategy = S.LwFStrategy(make_model(), None, CONTEXT, plugins=[by_keyword])
    report = train_task(strategy, tasks[0], rounds=1)[0]
    assert by_keyword.iterations == report.steps

    class CountingReplay(S.ReplayStrategy):
        def make_plugins(self):
            return [Counting()]

    sub = CountingReplay(make_model(), None, CONTEXT)
    report = train_task(sub, tasks[0], rounds=1)[0]
    plugin = plugin_of(sub, "Counting")
    assert plugin.iterations == report.steps
    restored = CountingReplay(make_model(), None, CONTEXT)
    restored.load_state_dict(sub.state_dict())
    assert plugin_of(restored, "Counting").iterations == report.steps


def test_adam_and_weight_decay_from_the_context(tasks):
    import attrs

    context = attrs.evolve(CONTEXT, optimizer="adam", lr=1e-3, weight_decay=1e-4)
    model = make_model()
    strategy = S.NaiveStrategy(model, None, context)
    optimizer = strategy.avalanche_strategy.optimizer
    assert isinstance(optimizer, torch.optim.Adam)
    assert optimizer.param_groups[0]["weight_decay"] == 1e-4
    train_task(strategy, tasks[0], rounds=2)
    restored = S.NaiveStrategy(make_model(), None, context)
    restored.load_state_dict(_roundtrip(strategy.state_dict()))
    state = restored.avalanche_strategy.optimizer.state
    assert state and all("exp_avg" in entry for entry in state.values())


def test_training_prints_nothing(tasks, capsys):
    strategy = S.ReplayStrategy(make_model(), None, CONTEXT)
    for t in range(2):
        train_task(strategy, tasks[t], rounds=2, seed=t)
    out = capsys.readouterr()
    assert out.out == ""


# ----------------------------------------------------------------- options


@pytest.mark.parametrize(("cls", "values", "field"), [
    (S.EWCStrategy, {"ewc_lambda": -1}, "ewc_lambda"),
    (S.EWCStrategy, {"mode": "onlinesum"}, "mode"),
    (S.LwFStrategy, {"temperature": 0}, "temperature"),
    (S.ReplayStrategy, {"mem_size": 0}, "mem_size"),
    (S.ReplayStrategy, {"storage_policy": "fifo"}, "storage_policy"),
    (S.DERStrategy, {"beta": -0.5}, "beta"),
    (S.MASStrategy, {"alpha": 1.5}, "alpha"),
])
def test_bad_options_name_the_field(cls, values, field):
    with pytest.raises(ConfigError) as err:
        build_options(cls.Options, values, component=cls.name, table="cl_options")
    assert err.value.field == f"cl_options.{field}"
    assert field in str(err.value)


# --------------------------------------------------------------- benchmarks

SPEC = StreamSpec(num_clients=2, num_tasks=5, seed=0, partition="iid", dirichlet_alpha=0.5,
                  public_fraction=0.1)


@pytest.mark.parametrize("download", [True, False])
@pytest.mark.parametrize("cls", BENCHMARKS, ids=lambda c: c.name)
def test_benchmark_without_data_fails_at_once_offline(tmp_path, cls, download):
    benchmark = cls(cls.Options(root=str(tmp_path), download=download, download_timeout=1.0))
    start = time.monotonic()
    with pytest.raises(BenchmarkUnavailableError) as err:
        benchmark.build(SPEC)
    assert time.monotonic() - start < 5.0
    message = f"{err.value} {err.value.hint}"
    assert "not available offline" in message and str(tmp_path) in message
    assert "root" in err.value.hint


def _write_idx(path, array: np.ndarray, code: int) -> None:
    header = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape)
    with open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def test_split_mnist_reads_local_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 200), ("t10k", 50)):
        labels = np.arange(n) % 10
        _write_idx(raw / f"{prefix}-images-idx3-ubyte",
                   rng.integers(0, 256, (n, 28, 28)), 0x08)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels, 0x08)
    stream = SplitMNIST(SplitMNIST.Options(root=str(tmp_path), download=False)).build(SPEC)
    assert stream.num_classes == 10 and stream.num_tasks == 5
    assert stream.input_spec.shape == (1, 28, 28)
    task = stream.clients[0].tasks[0]
    # the images stay bytes; every model reads them as x / 255 (tests/test_image_bytes.py)
    assert task.x_train.dtype == torch.uint8 and tuple(task.x_train.shape[1:]) == (1, 28, 28)
    assert len(task.classes) == 2


def test_grad_clip_bounds_every_step(tasks):
    """context.grad_clip: with plain SGD (no momentum) each step moves the weights by at
    most lr * max_norm; without it the first steps move them much further."""
    import attrs

    def largest_step(clip):
        context = attrs.evolve(CONTEXT, lr=1.0, momentum=0.0, batch_size=8, grad_clip=clip)
        model = make_model()
        strategy = BY_NAME["naive"](model, S.NaiveStrategy.Options(), context)
        steps = []

        def watch(x, y, logits):  # runs before backward: the weights of the last step
            now = torch.cat([p.detach().flatten() for p in model.parameters()])
            if hasattr(watch, "before"):
                steps.append(float((now - watch.before).norm()))
            watch.before = now
            return logits.sum() * 0.0

        train_task(strategy, tasks[0], extra_losses=[watch])
        return max(steps)

    assert largest_step(0.01) <= 0.01 + 1e-6
    assert largest_step(0.0) > 0.1
