"""Baseline fusion ``fm-only``: the foundation model without any private data.

The paper's point of comparison: a pretrained FM that cannot use the clients'
private data. Each round the server trains the FM's head on the labelled
examples of its public set only (the run's ``public_labels`` budget: the same
labels one-by-one may use), restricted to the classes announced so far (the
clients' ``classes_seen``: label names, not data). The small models are uploaded (so the
run is otherwise identical) but never used, and the clients get no FM guidance (the
default client side: they only train their small models). Every client receives
the same FM part.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

import fclkit
from fclkit.config import int_at_least, positive_float, setting
from fclkit.interfaces import KnowledgeFusion
from fclkit.messages import Download, Failure, FusionResult, RoundInfo, Upload


class PublicDataFM(KnowledgeFusion):
    name = "fm-only"
    description = ("baseline: the foundation model without private data (head trained on "
                   "the server's labelled public examples only; needs public_labels > 0)")
    requires_foundation_model = True

    @attrs.frozen
    class Options:
        epochs: int = setting(20, "epochs over the public set per round", int_at_least(1))
        batch_size: int = setting(64, "mini-batch size", int_at_least(1))
        lr: float = setting(5e-3, "Adam learning rate", positive_float)

    def setup(self, context: Any) -> None:
        super().setup(context)
        public = context.public
        if public is None or len(public.x) == 0:
            raise fclkit.ConfigError(
                "fusion", "fm-only", "trains on the server's labelled public examples, and "
                "this run gives the server no public set", hint="set public_fraction > 0")
        if len(public.labelled_index) == 0:
            raise fclkit.ConfigError(
                "fusion", "fm-only", "trains on the server's labelled public examples, and "
                "the server holds no labels (public_labels = 0)",
                hint="set public_labels, e.g. --public-labels 5 (labels per class)")
        self.state = context.foundation_model.trainable_state()
        self.known: list[int] = []

    def fuse(self, round_info: RoundInfo, uploads: Sequence[Upload],
             failures: Sequence[Failure]) -> FusionResult:
        import torch

        from fclkit.runtime.seeding import derive_seed

        from .distillation import fit_on_features

        self.known = sorted(set(self.known).union(*(u.classes_seen for u in uploads)))
        fm = self.context.foundation_model
        fm.load_trainable_state(self.state)
        public = self.context.public
        rows, target = public.labelled_among(self.known)
        if len(target):
            z = fm.precompute(public.x[rows])  # the frozen part runs once per round
            gen = torch.Generator().manual_seed(derive_seed(
                self.context.seed, "fm-only", round_info.task, round_info.round))
            fit_on_features(fm, z, target, torch.tensor(self.known),
                            epochs=self.options.epochs, batch_size=self.options.batch_size,
                            lr=self.options.lr, generator=gen)
            self.state = fm.trainable_state()
        return FusionResult(
            downloads={k: Download(fm_state=self.state, fm_classes=tuple(self.known))
                       for k in self.context.client_ids},
            global_fm_state=self.state, global_fm_classes=tuple(self.known))

    def state_dict(self) -> dict[str, Any]:
        return {"state": self.state, "known": self.known}

    def load_state_dict(self, state: Any) -> None:
        if state:
            self.state, self.known = state["state"], list(state["known"])
