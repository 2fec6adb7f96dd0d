"""GLFC (docs/methods/glfc.md): its losses on hand-made batches, the old model the client
distils from, the proxy server's gradient inversion and choice, and a run by name."""

from __future__ import annotations

from typing import Any

import pytest

import fclkit
from fclkit import testing
from fclkit.interfaces import ClientRound, FusionContext
from fclkit.messages import Download, RoundInfo, Upload
from fclkit.stream import InputSpec, PublicSet

pytestmark = pytest.mark.usefixtures("one_thread")


def _mlp(seed: int = 0) -> Any:
    import torch

    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(),
                               torch.nn.Linear(32, testing.NUM_CLASSES))


def _tasks() -> list[Any]:
    """Two tasks of three classes each; class c lights row c of the 8x8 image (easy to
    learn, so a trained model is right on its prototypes)."""
    import torch

    from fclkit.stream import TaskData

    g = torch.Generator().manual_seed(0)
    out = []
    for t in range(2):
        classes = tuple(range(3 * t, 3 * t + 3))
        y = torch.tensor(classes).repeat_interleave(20)
        x = 0.2 * torch.rand(len(y), 1, 8, 8, generator=g)
        x[torch.arange(len(y)), 0, y] += 0.8
        out.append(TaskData(t, classes, x[:48], y[:48], x[48:], y[48:]))
    return out


def _train(model: Any, task: Any, epochs: int = 30) -> None:
    import torch
    import torch.nn.functional as F

    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(epochs):
        for idx in torch.randperm(len(task.y_train)).split(16):
            loss = F.cross_entropy(model(task.x_train[idx]), task.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()


def _round(model: Any, task: Any, *, round: int = 0, rounds: int = 1,
           download: Download | None = None) -> ClientRound:
    return ClientRound(client_id=0, round_info=RoundInfo(task.task_id, round, rounds),
                       task=task, small_model=model, context=testing._context(), epochs=1,
                       foundation_model=None, fm_classes=(), download=download)


def _options(**changes: Any) -> Any:
    from fclkit_builtins.glfc.fusion import GLFC

    return GLFC.Options(**changes)


# ----------------------------------------------------------- the local losses


def test_compensation_weights_normalise_old_and_new_classes_apart():
    import torch
    import torch.nn.functional as F

    from fclkit_builtins.glfc.losses import compensation_weights, gradient_compensated_ce

    # labels 0, 1 are old classes (exemplars), 2, 3 the current task's
    logits = torch.tensor([[4.0, 0.0, 0.0, 0.0],   # old, easy
                           [0.0, 0.5, 0.0, 0.0],   # old, hard
                           [0.0, 0.0, 3.0, 0.0],   # new, easy
                           [0.0, 0.0, 0.0, 1.0],   # new, middling
                           [1.0, 0.0, 0.0, 0.0]],  # new (label 3), very hard
                          requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 3])
    w = compensation_weights(logits, y, new_classes=(2, 3))
    g = 1 - logits.detach().softmax(1)[torch.arange(5), y]  # |p_y - 1|
    expected = torch.cat([g[:2] / g[:2].mean(), g[2:] / g[2:].mean()])
    assert torch.allclose(w, expected)
    assert torch.isclose(w[:2].mean(), torch.tensor(1.0))  # each group averages 1
    assert torch.isclose(w[2:].mean(), torch.tensor(1.0))
    assert w[1] > w[0] and w[4] > w[3] > w[2]  # harder examples weigh more
    # a shared normalisation would let the new group's large gradients set the scale
    assert not torch.allclose(w, g / g.mean())

    loss = gradient_compensated_ce(logits, y, (2, 3))
    ce = F.cross_entropy(logits, y, reduction="none")
    assert torch.isclose(loss, (expected * ce).mean())
    loss.backward()  # the weights are constants: d/dlogits = w_i (p_i - onehot_i) / b
    p = logits.detach().softmax(1)
    grad = expected.view(-1, 1) * (p - F.one_hot(y, 4).float()) / 5
    assert torch.allclose(logits.grad, grad, atol=1e-6)

    first_task = compensation_weights(logits, y, new_classes=(0, 1, 2, 3))  # no old class
    assert torch.allclose(first_task, g / g.mean())


def test_relation_target_joins_the_old_models_relations_with_the_label():
    import torch

    from fclkit_builtins.glfc.losses import relation_distillation, relation_target

    old_logits = torch.tensor([[2.0, 0.0, 9.0, 9.0, 9.0, 9.0],
                               [0.0, 1.0, -9.0, 9.0, 0.0, 0.0]])
    y = torch.tensor([3, 1])  # a new class (3), an old class's exemplar (1)
    target = relation_target(old_logits, y, old_classes=(0, 1), new_classes=(2, 3))
    p_old = old_logits[:, :2].softmax(1)  # the old model's outputs on the old classes only
    assert torch.allclose(target[0], torch.cat([p_old[0], torch.tensor([0.0, 1.0, 0, 0])]) / 2)
    assert torch.allclose(target[1], torch.cat([p_old[1], torch.zeros(4)]))
    assert torch.allclose(target.sum(1), torch.ones(2))
    assert (target[:, 4:] == 0).all()  # classes no one has learnt yet

    hot = relation_target(old_logits, y, (0, 1), (2, 3), temperature=4.0)
    assert hot[0, 0] < target[0, 0]  # a higher temperature flattens the old relations

    matching = torch.log(target.clamp_min(1e-12))  # the student already gives the target
    assert float(relation_distillation(matching, target)) < 1e-6
    assert float(relation_distillation(torch.zeros(2, 6), target)) > 0.1


def test_the_term_turns_the_strategys_cross_entropy_into_glfcs_loss():
    import torch
    import torch.nn.functional as F

    from fclkit_builtins.glfc.losses import (
        glfc_loss_term,
        gradient_compensated_ce,
        relation_distillation,
        relation_target,
    )

    old_model, model = _mlp(seed=1), _mlp(seed=2)
    task = testing.make_tasks()[1]  # classes 3, 4, 5; 0, 1, 2 are old
    x = torch.cat([task.x_train[:6], testing.make_tasks()[0].x_train[:4]])
    y = torch.cat([task.y_train[:6], testing.make_tasks()[0].y_train[:4]])
    term = glfc_loss_term(old_model, old_classes=(0, 1, 2), new_classes=(3, 4, 5),
                          gc_weight=0.5, rd_weight=0.5, temperature=1.0)

    logits = model(x)
    strategy_loss = F.cross_entropy(logits, y) + term(x, y, logits)  # what the strategy adds
    strategy_loss.backward()
    via_term = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    logits = model(x)
    target = relation_target(old_model(x).detach(), y, (0, 1, 2), (3, 4, 5))
    glfc = 0.5 * gradient_compensated_ce(logits, y, (3, 4, 5)) + 0.5 * relation_distillation(
        logits, target)
    glfc.backward()
    assert torch.isclose(strategy_loss, glfc, atol=1e-6)
    for a, p in zip(via_term, model.parameters(), strict=True):
        assert torch.allclose(a, p.grad, atol=1e-6)
    assert all(p.grad is None for p in old_model.parameters())  # the old model is not trained


# ------------------------------------------------------------ the client side


def test_the_client_distils_from_the_chosen_old_model_it_receives():
    import torch

    from fclkit_builtins.glfc.client import OLD_PREFIX, GLFCClient

    tasks = testing.make_tasks()
    model = _mlp()
    side = GLFCClient(_options(proxy=False))
    assert side.extra_losses(_round(model, tasks[0])) == []  # first task: plain CE

    last_global = _mlp(seed=3).state_dict()
    chosen = _mlp(seed=4).state_dict()
    model.load_state_dict(last_global)
    choice = {"old_task": 0, "old_round": 0, "old_classes": [0, 1, 2]}
    side.receive(Download(small_state=last_global, metadata={"glfc": choice},
                          payload={OLD_PREFIX + k: v for k, v in chosen.items()}))
    assert side.old_source == [0, 0] and side.old_learned == [0, 1, 2]
    (term,) = side.extra_losses(_round(model, tasks[1]))
    assert all(torch.equal(side.old_model[k], chosen[k]) for k in chosen)

    x, y = tasks[1].x_train[:8], tasks[1].y_train[:8]
    teacher = _mlp()
    teacher.load_state_dict(chosen)
    from fclkit_builtins.glfc.losses import glfc_loss_term

    reference = glfc_loss_term(teacher, old_classes=(0, 1, 2), new_classes=(3, 4, 5),
                               gc_weight=0.5, rd_weight=0.5, temperature=1.0)
    with torch.no_grad():
        logits = model(x)
        assert torch.isclose(term(x, y, logits), reference(x, y, logits))

    # no weights in the payload: the chosen model is the download's own (the last round's)
    other = GLFCClient(_options(proxy=False))
    other.receive(Download(small_state=last_global, metadata={"glfc": choice}))
    assert all(torch.equal(other.old_model[k], last_global[k]) for k in last_global)

    # never told: the model held when the next task starts
    lost = GLFCClient(_options(proxy=False))
    lost.extra_losses(_round(model, tasks[0]))
    model.load_state_dict(chosen)
    (term,) = lost.extra_losses(_round(model, tasks[1]))
    assert lost.old_source == [0, -1] and lost.old_learned == [0, 1, 2]
    assert all(torch.equal(lost.old_model[k], chosen[k]) for k in chosen)


def test_client_state_saves_without_pickle_and_prototypes_are_sent_once_per_task():
    import torch

    from fclkit.serialization import flatten_state, unflatten_state
    from fclkit_builtins.glfc.client import GLFCClient
    from fclkit_builtins.glfc.proxy import PROTO_PREFIX, SHAPE_KEY

    tasks = testing.make_tasks()
    model = _mlp()
    side = GLFCClient(_options(proto_steps=5))
    side.extra_losses(_round(model, tasks[0], rounds=2))
    payload = side.payload(_round(model, tasks[0], rounds=2))
    assert payload[SHAPE_KEY].tolist() == [1, 8, 8]
    assert len({k.split("/")[2] for k in payload if k.startswith(PROTO_PREFIX)}) == 3
    assert side.payload(_round(model, tasks[0], round=1, rounds=2)) == {}  # sent already
    assert all(p.grad is None for p in model.parameters())  # the model is left as it was
    side.receive(Download(small_state=model.state_dict(),
                          metadata={"glfc": {"old_task": 0, "old_round": 1,
                                             "old_classes": [0, 1, 2]}}))
    skeleton, tensors = flatten_state(side.state_dict())
    twin = GLFCClient(_options(proto_steps=5))
    twin.load_state_dict(unflatten_state(skeleton, dict(tensors)))
    assert twin.old_source == [0, 1] and twin.sent_task == 0
    assert all(torch.equal(twin.old_model[k], v) for k, v in model.state_dict().items())
    assert GLFCClient(_options(proxy=False)).payload(_round(model, tasks[1])) == {}


# ------------------------------------------------------------- the proxy server


def test_gradient_inversion_recovers_the_label_and_the_perturbed_prototype():
    import torch

    from fclkit_builtins.glfc.proxy import (
        build_encoder,
        encoder_gradient,
        infer_label,
        reconstruct,
    )

    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 8, 8, generator=g)
    encoder = build_encoder((1, 8, 8), testing.NUM_CLASSES, seed=0)
    twin = build_encoder((1, 8, 8), testing.NUM_CLASSES, seed=0)  # the server's copy
    assert all(torch.equal(a, b) for a, b in zip(encoder.parameters(), twin.parameters(),
                                                 strict=True))
    grads = encoder_gradient(encoder, x, label=4)
    assert infer_label(grads) == 4
    samples = reconstruct(twin, grads, 4, (1, 8, 8), steps=15, lr=0.1, keep=5,
                          generator=torch.Generator().manual_seed(1))
    assert samples.shape == (5, 1, 8, 8)
    assert float((samples[-1] - x).abs().max()) < 0.05


def _fusion(**options: Any) -> Any:
    import torch

    from fclkit_builtins.glfc.fusion import GLFC

    fusion = GLFC(_options(**options))
    fusion.setup(FusionContext(
        client_ids=(0, 1), architectures={0: "mlp", 1: "mlp"},
        num_classes=testing.NUM_CLASSES, device="cpu", seed=0, foundation_model=None,
        public=PublicSet(x=torch.rand(8, 1, 8, 8)), build_small_model=lambda arch: _mlp(),
        input_spec=InputSpec("image", (1, 8, 8))))
    return fusion


def test_the_proxy_server_picks_the_global_model_that_scores_best_on_its_reconstructions():
    import torch

    from fclkit_builtins.glfc.client import OLD_PREFIX
    from fclkit_builtins.glfc.proxy import prototype_gradients

    tasks = _tasks()
    good = _mlp(seed=0)
    _train(good, tasks[0])  # knows classes 0-2
    bad = _mlp(seed=0)
    _train(bad, tasks[1])  # knows 3-5 only: wrong on every class of task 0

    def upload(cid: int, model: Any, payload: dict) -> Upload:
        return Upload(client_id=cid, architecture="mlp", classes_seen=(0, 1, 2),
                      num_examples=20, small_state={k: v.clone() for k, v in
                                                    model.state_dict().items()},
                      payload=payload)

    y0 = tasks[0].y_train
    with torch.no_grad():
        assert bool((good(tasks[0].x_train).argmax(1) == y0).all())
        assert not bool((bad(tasks[0].x_train).argmax(1) == y0).any())
    # client 0's perturbed prototype gradients (client 1 sends none)
    payload = prototype_gradients(_mlp(seed=5), tasks[0].x_train, y0, tasks[0].classes,
                                  num_classes=testing.NUM_CLASSES, seed=0, steps=10, lr=0.2)
    fusion = _fusion(recon_steps=15)
    # round 0: both clients upload the good model (FedAvg = good)
    first = fusion.fuse(RoundInfo(0, 0, 2), [upload(0, good, payload), upload(1, good, {})],
                        [])
    proxy = fusion.proxy
    assert proxy.labels == [0, 1, 2]  # read from the gradients alone
    # the last recon_samples = 20 iterates of each inversion; 15 steps make 15 of them
    assert len(proxy.monitor_y) == 3 * 15 and proxy.best_score == 1.0
    assert "glfc" not in first.downloads[0].metadata  # not the task's last round
    # round 1, the last: the global model got worse on the task's classes
    last = fusion.fuse(RoundInfo(0, 1, 2), [upload(0, bad, {}), upload(1, bad, {})], [])
    assert proxy.best_round == 0
    for d in last.downloads.values():
        assert d.metadata["glfc"]["old_task"] == 0 and d.metadata["glfc"]["old_round"] == 0
        assert d.metadata["glfc"]["old_classes"] == [0, 1, 2]
        assert all(torch.equal(d.small_state[k], v) for k, v in bad.state_dict().items())
        old = {k[len(OLD_PREFIX):]: v for k, v in d.payload.items()}
        assert all(torch.equal(old[k], v) for k, v in good.state_dict().items())
        assert d.nbytes == 2 * sum(v.numel() * 4 for v in good.state_dict().values())

    # the other way round the last round wins, and nothing but its weights travels
    fusion = _fusion(recon_steps=15)
    fusion.fuse(RoundInfo(0, 0, 2), [upload(0, bad, payload)], [])
    last = fusion.fuse(RoundInfo(0, 1, 2), [upload(0, good, {})], [])
    assert fusion.proxy.best_round == 1 and last.downloads[0].payload == {}

    # the server's state saves without pickle and a restored server chooses the same
    from fclkit.serialization import flatten_state, unflatten_state

    skeleton, tensors = flatten_state(fusion.state_dict())
    twin = _fusion(recon_steps=15)
    twin.load_state_dict(unflatten_state(skeleton, dict(tensors)))
    assert twin.proxy.best_round == 1 and len(twin.proxy.monitor_y) == len(
        fusion.proxy.monitor_y)


def test_token_inputs_ask_for_proxy_off():
    import torch

    from fclkit.errors import ConfigError
    from fclkit_builtins.glfc.fusion import GLFC
    from fclkit_builtins.glfc.proxy import prototype_gradients

    fusion = GLFC(_options())
    context = dict(client_ids=(0,), architectures={0: "text-cnn"}, num_classes=4,
                   device="cpu", seed=0, foundation_model=None, public=None,
                   build_small_model=lambda arch: _mlp())
    with pytest.raises(ConfigError, match="gradient inversion") as refused:
        fusion.setup(FusionContext(**context, input_spec=InputSpec("text", (32,))))
    assert "proxy=false" in refused.value.hint
    GLFC(_options(proxy=False)).setup(FusionContext(**context,
                                                    input_spec=InputSpec("text", (32,))))
    with pytest.raises(ConfigError, match="gradient inversion"):
        prototype_gradients(_mlp(), torch.zeros(4, 64, dtype=torch.long),
                            torch.zeros(4, dtype=torch.long), (0,), num_classes=4, seed=0,
                            steps=1, lr=0.1)


# ------------------------------------------------------------------- by name


def test_glfc_runs_by_name_with_finite_metrics(tmp_path):
    import math

    common = dict(benchmark="digits", cl="replay", tasks=2, rounds=2, clients=2, epochs=2,
                  loggers="none", threads=1, output=str(tmp_path))
    glfc = fclkit.run(fclkit.ExperimentConfig(
        fusion="glfc", fusion_options={"recon_steps": 1, "proto_steps": 5}, **common))
    assert glfc.metrics["failures"] == []
    small = glfc.summary("small")
    assert all(math.isfinite(v) for row in small["accuracy_matrix"] for v in row)
    # 5 classes per task: chance is 0.1 over the 10 outputs
    assert small["accuracy_matrix"][1][0] > 0.5 and small["accuracy_matrix"][1][1] > 0.3
    assert math.isfinite(small["average_accuracy"]) and math.isfinite(
        small["average_forgetting"])
    fedavg = fclkit.run(fclkit.ExperimentConfig(fusion="fedavg", **common),
                        write_results=False)
    # the prototype gradients travel up: GLFC uploads more than FedAvg
    assert glfc.metrics["communication"]["bytes_up_total"] > fedavg.metrics[
        "communication"]["bytes_up_total"]


def test_fclkit_plugins_lists_glfc_with_its_options():
    from typer.testing import CliRunner

    from fclkit.cli import app

    res = CliRunner().invoke(app, ["plugins", "--options"], env={"COLUMNS": "200"},
                             catch_exceptions=False)
    assert res.exit_code == 0
    assert "glfc" in res.output
    for option in ("gc_weight", "rd_weight", "proxy", "recon_steps", "proto_steps"):
        assert option in res.output
