"""Image client models beyond the built-in ``mlp`` and ``cnn``: ``lenet`` and ``resnet8``.

Both take any image size from 8x8 up (adaptive pooling) and any channel count.
Importing this module is light: torch loads in ``build`` (modules in :mod:`.nets`).
"""

from __future__ import annotations

import attrs

from fclkit.config import int_at_least, one_of, setting
from fclkit.errors import ConfigError
from fclkit.interfaces import ClientModel
from fclkit.stream import InputSpec


def _channels(input_spec: InputSpec, name: str) -> int:
    if input_spec.modality != "image" or len(input_spec.shape) != 3:
        raise ConfigError("client_models", name,
                          f"takes images (C, H, W), not {input_spec.modality!r} inputs of "
                          f"shape {input_spec.shape}")
    return int(input_spec.shape[0])


class LeNetModel(ClientModel):
    name = "lenet"
    description = "LeNet-5 (two 5x5 conv layers, three linear layers), any image size"
    modalities = frozenset({"image"})

    @attrs.frozen
    class Options:
        scale: int = setting(1, "channel multiplier of the conv layers (6 and 16 times it)",
                             int_at_least(1))

    def build(self, input_spec: InputSpec, num_classes: int):
        from .nets import LeNet

        return LeNet(_channels(input_spec, self.name), num_classes, self.options.scale)


class ResNet8Model(ClientModel):
    name = "resnet8"
    description = "tiny ResNet: stem + 3 residual blocks (16/32/64 channels), group norm"
    modalities = frozenset({"image"})

    @attrs.frozen
    class Options:
        channels: int = setting(16, "channels of the first stage (doubled per stage)",
                                int_at_least(1))
        norm: str = setting("group", "normalisation: 'group' (federation-friendly), "
                            "'batch' or 'none'", one_of("group", "batch", "none"))

    def build(self, input_spec: InputSpec, num_classes: int):
        from .nets import ResNet8

        return ResNet8(_channels(input_spec, self.name), num_classes,
                       self.options.channels, self.options.norm)


IMAGE_MODELS = (LeNetModel, ResNet8Model)
