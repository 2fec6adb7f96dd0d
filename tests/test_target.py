"""TARGET (fusion ``target``): the server's generator inverts the global model into inputs
of the old classes; the clients distil the previous global model on them; it runs by name."""

from __future__ import annotations

import math
from typing import Any

import attrs
import pytest

import fclkit
from fclkit import testing
from fclkit.interfaces import ClientRound, FusionContext
from fclkit.messages import Download, RoundInfo, Upload
from fclkit.plugins import build_registry
from fclkit.serialization import flatten_state, unflatten_state
from fclkit.stream import InputSpec, TaskData

pytestmark = pytest.mark.usefixtures("one_thread")

REGISTRY = build_registry()
SPEC = InputSpec("image", (1, 8, 8))
#: synthesis small enough for a test (the defaults are sized for the default run)
SMALL = {"synthesis_rounds": 4, "generator_steps": 10, "synthesis_batch_size": 64,
         "warmup": 2, "student_steps": 100}


def _digits() -> tuple[Any, Any]:
    import torch

    from fclkit_builtins.digits.benchmark import load_digits

    images, labels = load_digits()
    x = torch.tensor(images, dtype=torch.float32).unsqueeze(1) / 16.0
    return x, torch.tensor(labels)


def _mlp(seed: int = 0) -> Any:
    import torch

    torch.manual_seed(seed)  # as the runtime builds models: same seed, same weights
    return REGISTRY.get("client_model", "mlp").cls().build(SPEC, 10)


def _plain_mlp(seed: int = 0) -> Any:
    """The MLP without layer norm (``norm = "none"``): no normalisation layer at all."""
    import torch

    torch.manual_seed(seed)
    cls = REGISTRY.get("client_model", "mlp").cls
    return cls(cls.Options(norm="none")).build(SPEC, 10)


def _resnet8_bn(seed: int = 0) -> Any:
    import torch

    torch.manual_seed(seed)
    cls = REGISTRY.get("client_model", "resnet8").cls
    return cls(cls.Options(norm="batch", channels=4)).build(SPEC, 10)


def _train(model: Any, x: Any, y: Any, epochs: int, extra: tuple = ()) -> None:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y)).split(16):
            logits = model(x[idx])
            loss = F.cross_entropy(logits, y[idx])
            for term in extra:
                loss = loss + term(x[idx], y[idx], logits)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()


def _fusion(build: Any = _mlp, **options: Any) -> Any:
    cls = REGISTRY.get("fusion", "target").cls
    fusion = cls(testing._options(cls, {**SMALL, **options}))
    fusion.setup(FusionContext(
        client_ids=(0, 1), architectures={0: "m", 1: "m"}, num_classes=10, device="cpu",
        seed=0, foundation_model=None, public=None, build_small_model=lambda arch: build(),
        input_spec=SPEC, num_tasks=3))
    return fusion


def _task(x: Any, y: Any, classes: tuple[int, ...], task_id: int = 0) -> TaskData:
    import torch

    keep = torch.isin(y, torch.tensor(classes))
    return TaskData(task_id=task_id, classes=classes, x_train=x[keep], y_train=y[keep],
                    x_test=x[keep], y_test=y[keep])


def _round(model: Any, task: TaskData, task_index: int) -> ClientRound:
    return ClientRound(client_id=0, round_info=RoundInfo(task=task_index, round=0,
                                                         rounds_per_task=1),
                       task=task, small_model=model, context=testing._context(), epochs=1,
                       foundation_model=None, fm_classes=(), download=None)


# --------------------------------------------------------------- the generator


def _distilled_accuracy(build: Any, inputs: Any, teacher: Any, x_test: Any, y_test: Any
                        ) -> float:
    """Accuracy on real ``x_test`` of a fresh model distilled from ``teacher`` on ``inputs``
    alone (never a real example): how much of the teacher's knowledge the inputs carry."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        targets = F.softmax(teacher(inputs) / 2.0, dim=1)
    student = build(1)
    opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)
    student.train()
    for _ in range(30):
        for idx in torch.randperm(len(inputs)).split(64):
            log_p = F.log_softmax(student(inputs[idx]) / 2.0, dim=1)
            loss = F.kl_div(log_p, targets[idx], reduction="batchmean")
            opt.zero_grad()
            loss.backward()
            opt.step()
    student.eval()
    with torch.no_grad():
        return float((student(x_test).argmax(1) == y_test).float().mean())


@pytest.mark.parametrize("build", [_plain_mlp, _resnet8_bn],
                         ids=["mlp-no-norm", "resnet8-batch-norm"])
def test_the_trained_generator_inverts_the_global_model_into_the_old_classes(build):
    """A global model that knows all ten digits; the generator is trained for four of them.
    With batch norm, the synthetic inputs' batch statistics match the model's running ones
    far better than an untrained generator's. Without any normalisation layer (the plain
    MLP: the cross-entropy rules alone), the model classifies the synthetic inputs into the
    four classes far more often than chance (4/10), mostly as the very class each was made
    for (an untrained generator's: rarely), and a fresh model distilled on them alone
    recognises real held-out images of the four far better than one distilled on an
    untrained generator's outputs."""
    import torch

    from fclkit_builtins.target.synthesis import (
        BatchNormStatistics,
        ImageGenerator,
        batch_norm_layers,
    )

    x, y = _digits()
    teacher = build()
    _train(teacher, x[:1200], y[:1200], epochs=4 if build is _plain_mlp else 1)
    old = (3, 5, 7, 8)
    held_out = torch.isin(y[1200:], torch.tensor(old))
    x_test, y_test = x[1200:][held_out], y[1200:][held_out]
    fusion = _fusion(build)
    synthetic = fusion.synthesize("m", teacher.state_dict(), old, task=0)
    assert synthetic.x.shape == (4 * 64, 1, 8, 8) and sorted(set(synthetic.y.tolist())) == [
        *old]
    assert 0 <= float(synthetic.x.min()) and float(synthetic.x.max()) <= 1
    assert bool((len(batch_norm_layers(teacher)) > 0) == (build is _resnet8_bn))
    assert all(math.isfinite(h["loss"]) for h in synthetic.history)
    # the student trained on the server after the warm-up imitates the teacher there
    assert synthetic.history[-1]["student_agreement"] > 0.5
    # the teacher's logits travel with the inputs, every output
    assert torch.allclose(synthetic.teacher_logits, teacher(synthetic.x).detach(), atol=1e-5)

    with torch.no_grad():
        torch.manual_seed(0)
        untrained = ImageGenerator(256, 16, (1, 8, 8)).eval()(torch.randn(len(synthetic.x), 256))
    if build is _resnet8_bn:  # the batch statistics of the synthetic set match the model's
        hooks = [BatchNormStatistics(m, 0.0) for m in batch_norm_layers(teacher)]
        with torch.no_grad():
            teacher(synthetic.x)
            matched = sum(float(h.loss) for h in hooks)
            teacher(untrained)
            unmatched = sum(float(h.loss) for h in hooks)
        print("batch-norm statistics loss", matched, "untrained", unmatched)
        assert matched < 0.5 * unmatched, (matched, unmatched)
    else:
        learnt = _distilled_accuracy(build, synthetic.x, teacher, x_test, y_test)
        baseline = _distilled_accuracy(build, untrained, teacher, x_test, y_test)
        print("distilled on synthetic", learnt, "on an untrained generator's", baseline)
        assert learnt > 0.4 and learnt > baseline + 0.15, (learnt, baseline)  # chance <= 0.25
        with torch.no_grad():
            pred = teacher(synthetic.x).argmax(1)
            pred_untrained = teacher(untrained).argmax(1)
        in_old = float(torch.isin(pred, torch.tensor(old)).float().mean())
        assert in_old > 0.7, in_old  # chance: 0.4
        # an untrained generator's blobs all look like one digit to the model (an 8 here),
        # so the comparison is per label: classified as the class the input was made for
        as_made = float((pred == synthetic.y).float().mean())
        as_made_untrained = float((pred_untrained == synthetic.y).float().mean())
        assert as_made > 0.6 and as_made > as_made_untrained + 0.3, (as_made, as_made_untrained)
        print("in old", in_old, "as made", as_made, "untrained", as_made_untrained,
              torch.bincount(pred_untrained, minlength=10).tolist())


# ----------------------------------------------------------------- the clients


def test_the_clients_distillation_is_absent_before_the_first_task_ends_and_positive_after():
    import torch

    from fclkit_builtins.target.fusion import CLASSES, LOGITS, X

    x, y = _digits()
    first, second = _task(x, y, (0, 1, 2), 0), _task(x, y, (3, 4, 5), 1)
    fusion = _fusion(kd_weight=5.0)
    side = type(fusion).ClientSide(fusion.options)
    student = _mlp()
    assert list(side.extra_losses(_round(student, first, 0))) == []  # task 1: no term

    # the end of task 1 on the server: FedAvg, then synthesis (only at the task's last round)
    uploads = []
    for cid in (0, 1):
        model = _mlp()
        _train(model, first.x_train[cid::2], first.y_train[cid::2], epochs=5)
        uploads.append(Upload(client_id=cid, architecture="m", classes_seen=(0, 1, 2),
                              num_examples=len(first.y_train[cid::2]),
                              small_state=model.state_dict()))
    mid = fusion.fuse(RoundInfo(task=0, round=0, rounds_per_task=2), uploads, [])
    assert all(not d.payload for d in mid.downloads.values())
    end = fusion.fuse(RoundInfo(task=0, round=1, rounds_per_task=2), uploads, [])
    download = end.downloads[0]
    assert set(download.payload) == {X, LOGITS, CLASSES}
    assert download.payload[CLASSES].tolist() == [0, 1, 2]
    assert download.nbytes > Download(small_state=download.small_state).nbytes
    # what the client does with that download: keeps the synthetic set (in its state too)
    side.receive(download)
    restored = type(side)(fusion.options)
    restored.load_state_dict(unflatten_state(*flatten_state(side.state_dict())))
    global_model = _mlp()
    global_model.load_state_dict(download.small_state)

    for client_side in (side, restored):
        terms = list(client_side.extra_losses(_round(student, second, 1)))
        assert len(terms) == 1
        fresh = float(terms[0](second.x_train[:16], second.y_train[:16], None))
        assert fresh > 0.01  # a model that is not the old global model is pulled towards it
        at_teacher = list(client_side.extra_losses(_round(global_model, second, 1)))[0]
        assert abs(float(at_teacher(second.x_train[:16], second.y_train[:16], None))) < 1e-5

    # training on task 2 with the term, against without: the model keeps the old global
    # model's outputs on the synthetic set, and on real images of the old classes it keeps
    # far more probability on those classes (with an mlp, too little to win: see docs)
    import torch.nn.functional as F

    plain, distilled = _mlp(), _mlp()
    plain.load_state_dict(download.small_state)
    distilled.load_state_dict(download.small_state)
    _train(plain, second.x_train, second.y_train, epochs=3)
    _train(distilled, second.x_train, second.y_train, epochs=3,
           extra=tuple(side.extra_losses(_round(distilled, second, 1))))

    def kl_on_synthetic(model: Any) -> float:
        with torch.no_grad():
            return float(F.kl_div(F.log_softmax(model(download.payload[X]), 1),
                                  F.softmax(download.payload[LOGITS], 1), reduction="batchmean"))

    def old_mass(model: Any) -> float:
        with torch.no_grad():
            return float(model(first.x_test).softmax(1)[:, :3].sum(1).mean())

    assert kl_on_synthetic(distilled) < 0.1 * kl_on_synthetic(plain)
    assert old_mass(distilled) > 10 * old_mass(plain)


def test_new_classes_ce_turns_the_strategys_cross_entropy_into_the_authors():
    import torch
    import torch.nn.functional as F

    from fclkit_builtins.target.fusion import _to_new_classes_ce

    torch.manual_seed(0)
    logits, new = torch.randn(6, 10), torch.tensor([4, 5, 6])
    y = torch.tensor([4, 5, 6, 4, 1, 2])  # the last two: replayed examples of old classes
    total = F.cross_entropy(logits, y, reduction="none")
    mixed = total.mean() + _to_new_classes_ce(logits, y, new)
    authors = F.cross_entropy(logits[:4][:, new], y[:4] - 4, reduction="sum")
    assert torch.allclose(mixed, (authors + total[4:].sum()) / 6, atol=1e-6)


def test_a_download_with_a_payload_survives_the_wire_format():
    import torch

    d = Download(small_state={"w": torch.ones(2)}, payload={"x": torch.zeros(3, 2)})
    back = Download.from_state(unflatten_state(*flatten_state(d.to_state())))
    assert torch.equal(back.payload["x"], d.payload["x"])
    assert d.nbytes == 2 * 4 + 6 * 4


# ---------------------------------------------------------------- by name, end to end


def test_target_runs_by_name_and_sends_its_synthetic_set_once_per_task():
    config = fclkit.ExperimentConfig(
        benchmark="digits", fusion="target", cl="naive", clients=2, tasks=2, rounds=1,
        epochs=1, loggers="none", threads=1, fusion_options=SMALL)
    result = fclkit.run(config, write_results=False)
    summary = result.summary()
    assert math.isfinite(summary["average_accuracy"])
    assert math.isfinite(summary["average_forgetting"])
    rows = result.metrics["communication"]["per_client_round"]
    down = {(r["task"], r["client"]): r["bytes_down"] for r in rows}
    # task 1's download carries the synthetic set, task 2's (the last task) only weights
    assert down[(0, 0)] > down[(1, 0)] + 4 * 64 * 64 * 4
    # the clients used it: without the distillation, task 2 trains to other weights
    off = fclkit.run(attrs.evolve(config, fusion_options={**SMALL, "kd_weight": 0.0}),
                     write_results=False)
    assert off.accuracy_matrix()[0] == result.accuracy_matrix()[0]  # task 1: no term yet
    assert off.accuracy_matrix()[1] != result.accuracy_matrix()[1]


def test_target_is_listed_and_keeps_the_fusion_contract():
    entry = REGISTRY.get("fusion", "target")
    assert entry.distribution == "fclkit" and entry.cls.requires_homogeneous_models
    testing.check_fusion(entry.cls, SMALL)


def test_target_refuses_inputs_it_cannot_synthesise():
    cls = REGISTRY.get("fusion", "target").cls
    fusion = cls(cls.Options())
    with pytest.raises(fclkit.IncompatibleComponentsError, match="synthesises images"):
        fusion.setup(FusionContext(
            client_ids=(0,), architectures={0: "m"}, num_classes=4, device="cpu", seed=0,
            foundation_model=None, public=None, build_small_model=lambda arch: None,
            input_spec=testing.INPUT_SPECS["text"]))
    with pytest.raises(fclkit.ConfigError, match="shift"):
        testing._options(cls, {"shift": -2})
