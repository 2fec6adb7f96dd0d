"""The ``logreg`` client model: multinomial logistic regression on the flattened input."""

from __future__ import annotations

import math

import fclkit


class LogisticRegression(fclkit.ClientModel):
    name = "logreg"
    description = "multinomial logistic regression on the flattened input"
    modalities = frozenset({"image", "tabular"})

    def build(self, input_spec, num_classes):
        from torch import nn

        return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_spec.shape), num_classes))
