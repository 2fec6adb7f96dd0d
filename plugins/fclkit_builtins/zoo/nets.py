"""Zoo models made into fclkit small models: any channel count, any size, K classes.

:func:`build_torchvision` and :func:`build_timm` return a :class:`ZooNet`: the zoo's
network behind a small wrapper that upsamples inputs below the architecture's
minimum size (or to the fixed size of ViT and MaxViT) and repeats a 1-channel
input when asked. Pretrained weights are used only when asked for, and only when
reachable: from the local cache, else downloaded when the network answers within
a few seconds; otherwise the build stops at once with one line.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn

from fclkit import network
from fclkit.errors import ConfigError, FclkitError

#: seconds the network may take to answer before pretrained weights count as unreachable
NETWORK_TIMEOUT = 3.0
#: torchvision models taking one input size only (their ``image_size``, else the weights')
FIXED_SIZE = ("vit_", "maxvit_")
#: torchvision models with auxiliary heads (they return a tuple in training unless off)
AUX_LOGITS = ("googlenet", "inception_v3")
IMAGENET_CLASSES = 1000


class ZooNet(nn.Module):
    """``net`` on inputs resized to what it accepts; returns ``(batch, classes)`` logits.

    A training batch of a single example is normalised with BatchNorm's running
    statistics: batch statistics over one value per channel (the 1x1 maps at the end
    of most zoo models) are undefined, and the last mini-batch of an epoch can have
    one example.
    """

    def __init__(self, net: nn.Module, *, min_size: int = 1, fixed_size: int | None = None,
                 repeat_channels: int = 1) -> None:
        super().__init__()
        self.net = net
        self.min_size = min_size
        self.fixed_size = fixed_size
        self.repeat_channels = repeat_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.repeat_channels > 1:
            x = x.repeat(1, self.repeat_channels, 1, 1)
        h, w = x.shape[-2:]
        if self.fixed_size is not None:
            size = (self.fixed_size, self.fixed_size)
        else:
            size = (max(h, self.min_size), max(w, self.min_size))
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        if not (self.training and x.shape[0] == 1):
            return self.net(x)
        norms = [m for m in self.net.modules()
                 if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
        for m in norms:
            m.train(False)
        try:
            return self.net(x)
        finally:
            for m in norms:
                m.train(True)


def _replace(net: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, child, module)


def adapt_first_conv(net: nn.Module, in_channels: int) -> None:
    """Give ``net``'s first 3-channel conv ``in_channels`` inputs, keeping its filters:
    summed over RGB for one channel (the same as repeating a grey input), else cycled
    over the channels and scaled by 3 / ``in_channels``."""
    first = next(((n, m) for n, m in net.named_modules()
                  if isinstance(m, nn.Conv2d) and m.in_channels == 3), None)
    if first is None:
        raise FclkitError(f"{type(net).__name__} has no 3-channel first convolution to adapt",
                          hint="set the client model's option channels = 'repeat'")
    name, conv = first
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size,  # type: ignore[arg-type]
                    stride=conv.stride, padding=conv.padding,  # type: ignore[arg-type]
                    dilation=conv.dilation, groups=conv.groups,  # type: ignore[arg-type]
                    bias=conv.bias is not None, padding_mode=conv.padding_mode)
    with torch.no_grad():
        weight = conv.weight
        if in_channels == 1:
            new.weight.copy_(weight.sum(1, keepdim=True))
        else:
            reps = math.ceil(in_channels / 3)
            new.weight.copy_(weight.repeat(1, reps, 1, 1)[:, :in_channels] * (3 / in_channels))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)  # type: ignore[union-attr]
    _replace(net, name, new)
    if getattr(net, "transform_input", False):  # googlenet/inception re-normalise RGB
        net.transform_input = False  # type: ignore[assignment]


def replace_head(net: nn.Module, num_classes: int, old: int = IMAGENET_CLASSES) -> None:
    """Give ``net``'s classifier (its last linear or 1x1-conv layer with ``old`` outputs)
    ``num_classes`` outputs, freshly initialised."""
    found = None
    for name, m in net.named_modules():
        if (isinstance(m, nn.Linear) and m.out_features == old) or (
                isinstance(m, nn.Conv2d) and m.out_channels == old):
            found = name, m
    if found is None:
        raise FclkitError(f"{type(net).__name__}: no classifier layer with {old} outputs "
                          "found to replace")
    name, m = found
    if isinstance(m, nn.Linear):
        new: nn.Module = nn.Linear(m.in_features, num_classes, bias=m.bias is not None)
    else:
        new = nn.Conv2d(m.in_channels, num_classes, m.kernel_size,  # type: ignore[arg-type]
                        stride=m.stride, padding=m.padding,  # type: ignore[arg-type]
                        bias=m.bias is not None)
    _replace(net, name, new)


def _unreachable(component: str, what: str, cache: str, url: str) -> FclkitError:
    host = urlparse(url).hostname or url
    return FclkitError(
        f"client model {component!r}: pretrained = true needs {what}, which is not in "
        f"{cache} and {host} cannot be reached (no network)",
        hint="copy the file there from a machine with a network, or set "
        f"--model-opt {component}.pretrained=false")


def torch_hub_file(url: str) -> Path:
    """Where ``torch.hub`` keeps the file of ``url`` (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def torchvision_weights(tv_name: str, component: str) -> Any:
    """The model's DEFAULT weights enum, once its file is cached or downloadable."""
    import torchvision.models

    weights = torchvision.models.get_model_weights(tv_name).DEFAULT
    path = torch_hub_file(weights.url)
    if not path.is_file() and not network.reachable(weights.url, NETWORK_TIMEOUT):
        raise _unreachable(component, f"torchvision's {weights} weights ({path.name})",
                           f"the torch hub cache ({path.parent})", weights.url)
    return weights


def build_torchvision(tv_name: str, component: str, shape: tuple[int, int, int],
                      num_classes: int, options: Any) -> ZooNet:
    import torchvision.models

    channels = shape[0]
    if options.channels == "repeat" and channels not in (1, 3):
        raise ConfigError(f"{component}.channels", "repeat",
                          f"repeats a 1-channel input; the input has {channels} channels: "
                          "use 'adapt'")
    kwargs: dict[str, Any] = {"aux_logits": False} if tv_name in AUX_LOGITS else {}
    if options.pretrained:
        weights = torchvision_weights(tv_name, component)
        net = torchvision.models.get_model(tv_name, weights=weights, **kwargs)
        replace_head(net, num_classes)
    else:
        weights = torchvision.models.get_model_weights(tv_name).DEFAULT
        if tv_name in AUX_LOGITS:
            kwargs["init_weights"] = True  # their default, without their warning
        net = torchvision.models.get_model(tv_name, weights=None, num_classes=num_classes,
                                           **kwargs)
    repeat = 1
    if channels != 3:
        if options.channels == "adapt":
            adapt_first_conv(net, channels)
        else:
            repeat = 3
    arch_min = int(max(weights.meta.get("min_size", (1, 1))))
    fixed = None
    if tv_name.startswith(FIXED_SIZE):
        fixed = int(getattr(net, "image_size", arch_min))
    return ZooNet(net, min_size=max(arch_min, options.min_size), fixed_size=fixed,
                  repeat_channels=repeat)


def _timm_cached_file(cfg: Any) -> Path | None:
    """The local file of a timm pretrained config, if it is cached."""
    hub_id = getattr(cfg, "hf_hub_id", None)
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        filename = getattr(cfg, "hf_hub_filename", None)
        for name in ([filename] if filename else ["model.safetensors", "pytorch_model.bin",
                                                  "open_clip_pytorch_model.bin"]):
            found = try_to_load_from_cache(hub_id.split("@")[0], name)
            if isinstance(found, str):
                return Path(found)
        return None
    url = getattr(cfg, "url", None)
    if url and torch_hub_file(url).is_file():
        return torch_hub_file(url)
    return None


def build_timm(model: str, component: str, shape: tuple[int, int, int], num_classes: int,
               options: Any) -> ZooNet:
    try:
        import timm
    except ImportError:
        raise FclkitError(f"client model {component!r} needs timm, which is not installed",
                          hint="pip install timm") from None

    if not timm.is_model(model):
        close = timm.list_models(f"*{model}*")[:8]
        raise ConfigError(f"{component}.model", model,
                          "not a timm model" + (f"; close: {', '.join(close)}" if close else
                                                "; timm.list_models() lists them"))
    channels = shape[0]
    kwargs: dict[str, Any] = {"num_classes": num_classes, "in_chans": channels}
    if options.pretrained:
        cfg = timm.models.get_pretrained_cfg(model)
        if cfg is None:
            raise ConfigError(f"{component}.pretrained", True,
                              f"timm has no pretrained weights for {model!r}")
        cached = _timm_cached_file(cfg)
        if cached is not None:
            kwargs["pretrained_cfg_overlay"] = {"file": str(cached)}
        else:
            url = (f"https://huggingface.co/{cfg.hf_hub_id}" if getattr(cfg, "hf_hub_id", None)
                   else getattr(cfg, "url", "") or "https://huggingface.co")
            if not network.reachable(url, NETWORK_TIMEOUT):
                raise _unreachable(component, f"timm's {model} weights",
                                   "the Hugging Face or torch hub cache", url)
    net = timm.create_model(model, pretrained=options.pretrained, **kwargs)
    cfg_dict = getattr(net, "pretrained_cfg", None) or {}
    size = cfg_dict.get("input_size", (3, 1, 1))[-2:]
    fixed = int(max(size)) if cfg_dict.get("fixed_input_size") else None
    # timm states no minimum size: its own when a config has one, else the total stride
    arch_min = max(cfg_dict.get("min_input_size", (3, 1, 1))[-2:])
    feature_info: Any = getattr(net, "feature_info", None) or []
    try:
        arch_min = max([arch_min, *(int(f["reduction"]) for f in feature_info)])
    except (KeyError, TypeError):
        pass
    zoo_net = ZooNet(net, min_size=max(int(arch_min), options.min_size), fixed_size=fixed)
    zoo_net.eval()
    try:  # a clear error now rather than a traceback in the first round
        with torch.no_grad():
            zoo_net(torch.zeros(2, *shape))
    except RuntimeError as exc:
        raise ConfigError(f"{component}.min_size", options.min_size,
                          f"timm's {model} fails on inputs of {shape[1]}x{shape[2]} upsampled "
                          f"to at least {zoo_net.min_size} ({str(exc).splitlines()[0]}); "
                          "set a larger min_size") from None
    return zoo_net.train()
