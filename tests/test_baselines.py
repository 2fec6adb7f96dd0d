"""The baselines of docs/baselines.md: each one's key mechanism, and each runs by name."""

from __future__ import annotations

from typing import Any

import pytest

import fclkit
from fclkit import testing
from fclkit.interfaces import ClientRound, FusionContext
from fclkit.messages import RoundInfo, Upload
from fclkit.plugins import build_registry
from fclkit.stream import PublicSet

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(clients=2, tasks=2, rounds=1, epochs=1, loggers="none", threads=1)


def _mlp(seed: int = 0) -> Any:
    import torch

    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(),
                               torch.nn.Linear(32, testing.NUM_CLASSES))


def _flat(model: Any) -> Any:
    import torch

    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _round(model: Any, task: Any, *, fm: Any = None, last: bool = True) -> ClientRound:
    return ClientRound(client_id=0, round_info=RoundInfo(task.task_id, 0, 1 if last else 2),
                       task=task, small_model=model, context=testing._context(), epochs=1,
                       foundation_model=fm, fm_classes=(), download=None)


def _train(model: Any, task: Any, epochs: int = 30, extra: tuple = ()) -> None:
    import torch
    import torch.nn.functional as F

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(epochs):
        for idx in torch.randperm(len(task.y_train)).split(16):
            logits = model(task.x_train[idx])
            loss = F.cross_entropy(logits, task.y_train[idx])
            for term in extra:
                loss = loss + term(task.x_train[idx], task.y_train[idx], logits)
            opt.zero_grad()
            loss.backward()
            opt.step()


# ------------------------------------------------------------------ fedprox


def test_fedprox_term_is_zero_at_the_received_weights_and_pulls_towards_them():
    import torch

    from fclkit_builtins.baselines.fedprox import FedProx

    model = _mlp()
    received = _flat(model).clone()
    task = testing.make_tasks()[0]
    side = FedProx.ClientSide(FedProx.Options(mu=0.5))
    (term,) = side.extra_losses(_round(model, task))
    x, y = task.x_train[:4], task.y_train[:4]
    at_start = term(x, y, model(x))
    at_start.backward()
    assert float(at_start) == 0.0
    assert all(float(p.grad.abs().max()) == 0.0 for p in model.parameters())
    with torch.no_grad():  # move away: mu/2 ||w - w0||^2, gradient mu (w - w0)
        for p in model.parameters():
            p.add_(0.1)
    model.zero_grad()
    moved = term(x, y, model(x))
    moved.backward()
    delta = _flat(model) - received
    assert float(moved) == pytest.approx(0.25 * float((delta ** 2).sum()), rel=1e-5)
    grad = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert torch.allclose(grad, 0.5 * delta, atol=1e-6)
    assert FedProx.ClientSide(FedProx.Options(mu=0.0)).extra_losses(_round(model, task)) == []


def test_fedprox_with_a_large_mu_stays_closer_to_the_global_weights():
    """The real strategy (Avalanche's naive) trained with the client side's loss terms."""
    from fclkit_builtins.baselines.fedprox import FedProx

    registry = build_registry()
    naive = registry.get("strategy", "naive").cls
    task = testing.make_tasks()[0]
    drift = {}
    for mu in (0.0, 10.0):
        model = _mlp()
        start = _flat(model).clone()
        strategy = naive(model, naive.Options(), testing._context())
        side = FedProx.ClientSide(FedProx.Options(mu=mu))
        rnd = _round(model, task)
        strategy.train_round(task, round_info=rnd.round_info, epochs=3,
                             extra_losses=list(side.extra_losses(rnd)))
        drift[mu] = float((_flat(model) - start).norm())
    assert drift[10.0] < 0.5 * drift[0.0], drift


# -------------------------------------------------------------------- feddf


def test_feddf_targets_speak_for_each_teachers_seen_classes_only():
    import torch

    from fclkit_builtins.baselines.feddf import ensemble_targets

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 6, generator=g), torch.randn(5, 6, generator=g)
    targets = ensemble_targets([(a, (0, 1)), (b, (0, 1, 2, 3))], 6)
    assert torch.allclose(targets.sum(1), torch.ones(5))
    assert (targets[:, 4:] == 0).all()  # no teacher has seen them
    pa = torch.zeros(5, 6)
    pa[:, :2] = a[:, :2].softmax(1)
    pb = torch.zeros(5, 6)
    pb[:, :4] = b[:, :4].softmax(1)
    expected = torch.cat([(pa[:, :2] + pb[:, :2]) / 2, pb[:, 2:4]], dim=1)
    expected = expected / expected.sum(1, keepdim=True)
    assert torch.allclose(targets[:, :4], expected, atol=1e-6)
    a_shouts = a.clone()
    a_shouts[:, 2:] = 50.0  # teacher a's outputs for classes it never saw are ignored
    assert torch.allclose(ensemble_targets([(a_shouts, (0, 1)), (b, (0, 1, 2, 3))], 6),
                          targets)
    by_logits = ensemble_targets([(a, (0, 1)), (b, (0, 1, 2, 3))], 6, mode="logits")
    assert (by_logits[:, 4:] == 0).all() and torch.allclose(by_logits.sum(1), torch.ones(5))


def test_feddf_distilled_model_matches_the_ensemble_better_than_fedavg():
    import torch
    import torch.nn.functional as F

    from fclkit_builtins.baselines.feddf import FedDF, ensemble_targets
    from fclkit_builtins.fusion.fedavg import weighted_average

    tasks = testing.make_tasks()  # client 0 learns classes 0-2, client 1 classes 3-5
    teachers = []
    for cid, task in enumerate(tasks):
        model = _mlp(seed=0)  # the same start, as in a run
        _train(model, task)
        teachers.append(Upload(client_id=cid, architecture="mlp",
                               classes_seen=tuple(task.classes), num_examples=len(task.y_train),
                               small_state={k: v.clone() for k, v in model.state_dict().items()}))
    public = PublicSet(x=torch.cat([t.x_test for t in tasks]),
                       y=torch.cat([t.y_test for t in tasks]))
    fusion = FedDF(FedDF.Options())
    fusion.setup(FusionContext(client_ids=(0, 1), architectures={0: "mlp", 1: "mlp"},
                               num_classes=testing.NUM_CLASSES, device="cpu", seed=0,
                               foundation_model=None, public=public,
                               build_small_model=lambda arch: _mlp()))
    result = fusion.fuse(RoundInfo(0, 0, 1), teachers, [])

    def logits_of(state: dict) -> Any:
        model = _mlp()
        model.load_state_dict(state)
        with torch.no_grad():
            return model(public.x)

    targets = ensemble_targets(
        [(logits_of(u.small_state), u.classes_seen) for u in teachers], testing.NUM_CLASSES)

    def kl(state: dict) -> float:
        return float(F.kl_div(F.log_softmax(logits_of(state), 1), targets,
                              reduction="batchmean"))

    distilled = result.downloads[0].small_state
    averaged = weighted_average([u.small_state for u in teachers],
                                [u.num_examples for u in teachers])
    assert result.downloads[1].small_state is distilled
    assert kl(distilled) < 0.5 * kl(averaged), (kl(distilled), kl(averaged))


# ---------------------------------------------------------------- fm-fedavg


def test_fm_fedavg_memory_is_bounded_balanced_and_saved():
    import torch

    from fclkit.serialization import flatten_state, unflatten_state
    from fclkit_builtins.baselines.fm_fedavg import FMFedAvg

    for policy in ("class-balanced", "reservoir"):
        side = FMFedAvg.ClientSide(FMFedAvg.Options(mem_size=10, storage_policy=policy))
        assert side.trains == {"fm"}
        torch.manual_seed(0)
        for t in range(3):
            side._remember(torch.randn(30, 4), torch.full((30,), t))
        assert len(side.memory_y) == 10 and side.memory_x.shape == (10, 4)
        if policy == "class-balanced":
            assert torch.bincount(side.memory_y).tolist() == [4, 3, 3]
        skeleton, tensors = flatten_state(side.state_dict())
        twin = FMFedAvg.ClientSide(FMFedAvg.Options(mem_size=10, storage_policy=policy))
        twin.load_state_dict(unflatten_state(skeleton, dict(tensors)))
        assert torch.equal(twin.memory_y, side.memory_y) and twin.offered == 90
    both = FMFedAvg.ClientSide(FMFedAvg.Options(train_small=True))
    assert both.trains == {"small", "fm"}


def _fm_run(mem_size: int) -> Any:
    config = fclkit.ExperimentConfig(
        fusion="fm-fedavg", cl="naive", clients=2, tasks=3, rounds=1, epochs=3,
        loggers="none", threads=1, fusion_options={"mem_size": mem_size})
    return fclkit.run(config, write_results=False)


@pytest.mark.slow
def test_fm_fedavg_learns_the_clients_classes_and_its_memory_keeps_the_old_ones():
    with_memory, without = _fm_run(200), _fm_run(0)
    fm = with_memory.summary("fm")
    assert fm["accuracy_matrix"][0][0] > 0.8  # digits task 1: chance is 1/3 or less
    assert with_memory.summary("fm_global")["accuracy_matrix"][0][0] > 0.8
    assert fm["average_forgetting"] < without.summary("fm")["average_forgetting"] - 0.1
    assert fm["average_accuracy"] > without.summary("fm")["average_accuracy"]
    small = with_memory.summary("small")["accuracy_matrix"]
    assert max(max(row) for row in small) < 0.6  # train_small = false: never trained


# ---------------------------------------------------------------- by name


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fedprox", "feddf", "fm-fedavg"])
def test_each_baseline_runs_by_name(name):
    config = fclkit.ExperimentConfig(fusion=name, cl="replay", **TINY)
    result = fclkit.run(config, write_results=False)
    assert result.metrics["failures"] == []
    models = set(result.metrics["models"])
    assert ("fm" in models) == (name == "fm-fedavg")


def test_feddf_distils_into_the_fm_part_when_there_is_one():
    fm = build_registry().get("foundation_model", "efficientnet-lite").cls()
    fm.setup(testing.INPUT_SPECS["image"], testing.NUM_CLASSES, "cpu")
    from fclkit_builtins.baselines.feddf import FedDF

    before = {k: v.clone() for k, v in fm.trainable_state().items()}
    fusion = FedDF(FedDF.Options(epochs=2))
    import torch

    g = torch.Generator().manual_seed(0)
    fusion.setup(FusionContext(
        client_ids=(0, 1), architectures={0: "mlp", 1: "mlp"},
        num_classes=testing.NUM_CLASSES, device="cpu", seed=0, foundation_model=fm,
        public=PublicSet(x=torch.rand(16, 1, 8, 8, generator=g),
                         y=torch.zeros(16, dtype=torch.long)),
        build_small_model=lambda arch: _mlp()))
    uploads = [Upload(client_id=c, architecture="mlp", classes_seen=(0, 1, 2),
                      num_examples=10, small_state=_mlp(seed=c).state_dict()) for c in (0, 1)]
    result = fusion.fuse(RoundInfo(0, 0, 1), uploads, [])
    assert result.global_fm_classes == (0, 1, 2)
    for d in result.downloads.values():
        assert d.fm_classes == (0, 1, 2) and d.small_state is not None
        assert any(not torch.equal(d.fm_state[k], before[k]) for k in before)
    assert fusion.state_dict()["fm_classes"] == [0, 1, 2]
