"""The classification models of the installed torchvision, as a literal.

Listing plugins must not import torchvision (seconds, and it loads torch), so the
names of ``torchvision.models.list_models(module=torchvision.models)`` are kept
here. ``tests/test_zoo.py`` compares them with the installed torchvision; when
they differ, regenerate this file::

    python -m fclkit_builtins.zoo.names
"""

from __future__ import annotations

#: generated from torchvision 0.29.1+cu130
TORCHVISION_MODELS: tuple[str, ...] = (
    "alexnet", "convnext_base", "convnext_large", "convnext_small", "convnext_tiny",
    "densenet121", "densenet161", "densenet169", "densenet201", "efficientnet_b0",
    "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "efficientnet_b4",
    "efficientnet_b5", "efficientnet_b6", "efficientnet_b7", "efficientnet_v2_l",
    "efficientnet_v2_m", "efficientnet_v2_s", "googlenet", "inception_v3", "maxvit_t",
    "mnasnet0_5", "mnasnet0_75", "mnasnet1_0", "mnasnet1_3", "mobilenet_v2",
    "mobilenet_v3_large", "mobilenet_v3_small", "regnet_x_16gf", "regnet_x_1_6gf",
    "regnet_x_32gf", "regnet_x_3_2gf", "regnet_x_400mf", "regnet_x_800mf", "regnet_x_8gf",
    "regnet_y_128gf", "regnet_y_16gf", "regnet_y_1_6gf", "regnet_y_32gf", "regnet_y_3_2gf",
    "regnet_y_400mf", "regnet_y_800mf", "regnet_y_8gf", "resnet101", "resnet152",
    "resnet18", "resnet34", "resnet50", "resnext101_32x8d", "resnext101_64x4d",
    "resnext50_32x4d", "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5",
    "shufflenet_v2_x2_0", "squeezenet1_0", "squeezenet1_1", "swin_b", "swin_s", "swin_t",
    "swin_v2_b", "swin_v2_s", "swin_v2_t", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn",
    "vgg16", "vgg16_bn", "vgg19", "vgg19_bn", "vit_b_16", "vit_b_32", "vit_h_14",
    "vit_l_16", "vit_l_32", "wide_resnet101_2", "wide_resnet50_2",
)


def installed_torchvision_models() -> tuple[str, ...]:
    """The classification models of the installed torchvision (imports it)."""
    import torchvision.models

    return tuple(sorted(torchvision.models.list_models(module=torchvision.models)))


def source(names: tuple[str, ...], version: str) -> str:
    """This module's text with ``names`` as the literal."""
    from pathlib import Path

    text = Path(__file__).read_text(encoding="utf-8")
    head, _, rest = text.partition("#: generated from torchvision ")
    _, _, tail = rest.partition("\n)\n")
    rows, line = [], "   "
    for name in names:
        item = f' "{name}",'
        if len(line) + len(item) > 92:
            rows.append(line)
            line = "   "
        line += item
    rows.append(line)
    body = "\n".join(rows)
    return (f"{head}#: generated from torchvision {version}\n"
            f"TORCHVISION_MODELS: tuple[str, ...] = (\n{body}\n)\n{tail}")


def main() -> None:
    from pathlib import Path

    import torchvision

    path = Path(__file__)
    path.write_text(source(installed_torchvision_models(), torchvision.__version__),
                    encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
