"""The zoo's client-model components: one class per torchvision model, and ``timm``.

The ``tv-*`` classes are made with ``type()`` from one base class and share one
Options class; they are registered from the names in :mod:`.names`, so listing
them imports neither torch nor torchvision. ``timm`` has ~1,000 models and
listing them needs importing timm (and torch), so timm gets one component with
an option ``model``; timm is optional (not a dependency): without it, that
component's build stops with one line saying to install it.
"""

from __future__ import annotations

import importlib.util
from typing import Any, ClassVar

import attrs

from fclkit.config import boolean, int_at_least, one_of, setting
from fclkit.errors import ConfigError
from fclkit.interfaces import ClientModel
from fclkit.stream import InputSpec

from .names import TORCHVISION_MODELS

PREFIX = "tv-"


def _shape(input_spec: InputSpec, name: str) -> tuple[int, int, int]:
    if input_spec.modality != "image" or len(input_spec.shape) != 3:
        raise ConfigError("client_models", name,
                          f"takes images (C, H, W), not {input_spec.modality!r} inputs of "
                          f"shape {input_spec.shape}")
    c, h, w = (int(s) for s in input_spec.shape)
    return c, h, w


_PRETRAINED = ("start from torchvision's DEFAULT ImageNet weights of the model: taken from "
               "the torch hub cache, else downloaded; offline and not cached, the run stops "
               "at once")
_MIN_SIZE = ("upsample (bilinear) inputs whose height or width is below this many pixels; "
             "the architecture's own minimum applies anyway (0: only that)")


@attrs.frozen
class ZooOptions:
    pretrained: bool = setting(False, _PRETRAINED, boolean)
    min_size: int = setting(0, _MIN_SIZE, int_at_least(0))
    channels: str = setting(
        "adapt", "inputs without 3 channels: 'adapt' gives the first conv the input's "
        "channel count (pretrained RGB filters summed for 1 channel, cycled otherwise); "
        "'repeat' repeats a 1-channel input 3 times", one_of("adapt", "repeat"))


class TorchvisionModel(ClientModel):
    """A torchvision classification model; subclasses name one (``tv_name``)."""

    name = "tv"
    description = ("a torchvision classification model, adapted to the input's channels, "
                   "size and class count")
    modalities = frozenset({"image"})
    Options = ZooOptions
    #: torchvision's name of the model (``resnet18``)
    tv_name: ClassVar[str] = ""

    def build(self, input_spec: InputSpec, num_classes: int):
        from .nets import build_torchvision

        return build_torchvision(self.tv_name, self.name, _shape(input_spec, self.name),
                                 num_classes, self.options)


def component_name(tv_name: str) -> str:
    """``resnet18`` -> ``tv-resnet18``, ``mobilenet_v3_small`` -> ``tv-mobilenet-v3-small``."""
    return PREFIX + tv_name.replace("_", "-")


def _class_name(tv_name: str) -> str:
    return "TV_" + tv_name


def torchvision_class(tv_name: str) -> type[TorchvisionModel]:
    """The component class of torchvision's model ``tv_name`` (made once, kept here)."""
    cls = globals().get(_class_name(tv_name))
    if cls is None:
        cls = type(_class_name(tv_name), (TorchvisionModel,), {
            "name": component_name(tv_name),
            "tv_name": tv_name,
            "__module__": __name__,
            "__qualname__": _class_name(tv_name),
        })
        globals()[cls.__name__] = cls  # importable by name: engines may pickle the class
    return cls


TORCHVISION_CLASSES: tuple[type[TorchvisionModel], ...] = tuple(
    torchvision_class(n) for n in TORCHVISION_MODELS)


class TimmModel(ClientModel):
    name = "timm"
    description = ("a timm model by name (option model), adapted to the input's channels, "
                   "size and class count (needs `pip install timm`)")
    modalities = frozenset({"image"})

    @attrs.frozen
    class Options:
        model: str = setting("resnet18", "timm's name of the model (`timm.list_models()` "
                             "lists them)")
        pretrained: bool = setting(
            False, "start from timm's pretrained weights of the model (its default tag): "
            "taken from the Hugging Face (or torch hub) cache, else downloaded; offline and "
            "not cached, the run stops at once", boolean)
        min_size: int = setting(0, _MIN_SIZE, int_at_least(0))

    def build(self, input_spec: InputSpec, num_classes: int):
        from .nets import build_timm

        return build_timm(self.options.model, self.name, _shape(input_spec, self.name),
                          num_classes, self.options)


def installed(package: str) -> bool:
    """Whether ``package`` can be imported (found without importing it)."""
    return importlib.util.find_spec(package) is not None


def zoo_models() -> list[Any]:
    """The zoo components to register: torchvision's when it is installed, and ``timm``
    (always: without timm its build says to install it, and the docs stay the same)."""
    return [*(TORCHVISION_CLASSES if installed("torchvision") else ()), TimmModel]
