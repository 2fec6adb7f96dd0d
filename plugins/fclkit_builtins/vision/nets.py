"""The torch modules behind the image client models (imported only when a model is built)."""

from __future__ import annotations

import torch
from torch import nn


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    return nn.Identity()


class LeNet(nn.Module):
    """LeNet-5 with 'same' padding and adaptive pooling, so 8x8 and 28x28 both fit.

    As in the original LeNet-5 the hidden units are tanh (bounded, never dead); each hidden
    layer is normalised before it (group norm after the convolutions, layer norm after the
    first two linear layers). The earlier ReLU version without normalisation collapsed in
    some seeds at the default local settings (SGD lr 0.05, momentum 0.9): the large
    gradients at a task switch killed every ReLU of a layer, and the model predicted one
    class (chance accuracy) for the rest of the run.
    """

    def __init__(self, in_channels: int, num_classes: int, scale: int = 1) -> None:
        super().__init__()
        c1, c2 = 6 * scale, 16 * scale
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 5, padding=2), _norm("group", c1), nn.Tanh(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5, padding=2), _norm("group", c2), nn.Tanh(),
            nn.AdaptiveAvgPool2d(4))
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c2 * 16, 120), nn.LayerNorm(120), nn.Tanh(),
            nn.Linear(120, 84), nn.LayerNorm(84), nn.Tanh(),
            nn.Linear(84, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.n1 = _norm(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.n2 = _norm(norm, cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                          _norm(norm, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.n1(self.conv1(x)))
        out = self.n2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet8(nn.Module):
    """A stem conv, three residual stages (one basic block each), global pooling, linear."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 16,
                 norm: str = "group") -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
                                  _norm(norm, width), nn.ReLU())
        self.stages = nn.Sequential(BasicBlock(width, width, 1, norm),
                                    BasicBlock(width, 2 * width, 2, norm),
                                    BasicBlock(2 * width, 4 * width, 2, norm))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(4 * width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))
