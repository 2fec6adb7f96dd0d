"""Fusion ``pilora``: PILoRA, Prototype Guided Incremental LoRA for Federated
Class-Incremental Learning (H. Guo, F. Zhu, W. Liu, X.-Y. Zhang, C.-L. Liu, ECCV 2024,
arXiv 2401.02094).

A frozen pretrained transformer is adapted with incremental LoRA (one LoRA per task,
the old ones frozen and summed, an orthogonality loss keeping the new task's LoRA away
from the old ones; :mod:`.lora`) and classifies by distance to class prototypes
(:mod:`.prototypes`). Clients train the current task's LoRA and prototypes on their
private data (:class:`~.client.PILoRAClient`); the server

* averages the current task's LoRA block, weighted by the clients' example counts
  (the old tasks' blocks are the same on every client and stay as they are);
* aggregates each class's prototypes with the prototype re-weighting module
  (:func:`~.prototypes.reweight`): weights from the distances between each client's
  prototype and the feature means the clients uploaded for that class;

and sends the result to every client: each client starts the next round (and task)
from the global model, which is also what is evaluated.

The foundation model must hold LoRA adapters (``hf``): :meth:`PILoRA.foundation_model_options`
builds it with ``lora = true``, ``lora_r = rank x tasks`` (one block per task),
``head = linear`` (the prototypes) and ``adapter_cache = true`` (evaluation reuses
features while the adapters are unchanged).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from fclkit.config import (
    boolean,
    build_options,
    int_at_least,
    non_negative,
    one_of,
    positive_float,
    setting,
)
from fclkit.errors import ConfigError
from fclkit.interfaces import KnowledgeFusion
from fclkit.messages import Download, Failure, FusionResult, RoundInfo, Upload

from . import lora, prototypes
from .client import PAYLOAD_CLASSES, PAYLOAD_MEANS, PILoRAClient

#: the FM options pilora sets (and the FM must have)
_FM_FIELDS = ("lora", "lora_r", "lora_alpha", "head")


class PILoRA(KnowledgeFusion):
    name = "pilora"
    description = ("PILoRA (Guo et al., ECCV 2024): incremental LoRA per task with an "
                   "orthogonality loss + prototype classifier; the server re-weights the "
                   "prototypes")
    requires_foundation_model = True
    ClientSide = PILoRAClient

    @attrs.frozen
    class Options:
        rank: int = setting(4, "LoRA rank of each task's adapter (the paper's code: 4)",
                            int_at_least(1))
        lora_alpha: float = setting(
            4.0, "LoRA scaling alpha of each task's adapter: its update is scaled by "
            "lora_alpha / rank (4 with rank 4: unscaled, as the paper's code)",
            positive_float)
        epochs: int = setting(
            1, "clients: local epochs per round (the paper: 10; 0: the run's epochs). "
            "Every step runs the backbone forward and backward, so the default is 1",
            int_at_least(0))
        lora_lr: float = setting(
            1e-5, "clients: Adam learning rate of the current task's LoRA (the paper's; "
            "larger rates adapt more and drift the old classes' features: "
            "docs/methods/pilora.md)", positive_float)
        prototype_lr: float = setting(
            2e-3, "clients: Adam learning rate of the current task's prototypes (the "
            "paper's)", positive_float)
        prototype_init: str = setting(
            "mean", "clients: a new class's prototype starts, at its task's first round, as "
            "the mean feature of the client's examples of it ('mean'), or at the FM head's "
            "random initial weights ('random', as the paper's random prototypes)",
            one_of("mean", "random"))
        cosine: bool = setting(
            True, "clients: both learning rates follow a cosine over the task's rounds "
            "(as the paper's code); false: constant", boolean)
        temperature: float = setting(
            1.0, "temperature T of the distance-based cross-entropy CE(-dist / T, y)",
            positive_float)
        prototype_weight: float = setting(
            1e-3, "weight of the prototype loss (mean distance of a feature to its "
            "class's prototype; the paper's code: 0.001)", non_negative)
        orthogonal_weight: float = setting(
            0.5, "weight of the orthogonality loss sum |A_old A_t^T| between the current "
            "task's LoRA A matrices and the old tasks' (the paper's code: 0.5)", non_negative)
        l1_weight: float = setting(
            0.01, "weight of the L1 norm of the current task's LoRA A matrices (the paper's "
            "code: 0.01; 0: off)", non_negative)
        reweight_temperature: float = setting(
            0.2, "server: temperature of the softmax over the clients' normalised inverse "
            "prototype-to-features distances (the paper's code: 0.2)", positive_float)

    # ------------------------------------------------------------ the FM it needs

    @classmethod
    def foundation_model_options(cls, config: Any, foundation_model: type) -> Mapping[str, Any]:
        fm_name = getattr(foundation_model, "name", foundation_model.__name__)
        fields = (attrs.fields_dict(foundation_model.Options)
                  if attrs.has(foundation_model.Options) else {})
        if not set(_FM_FIELDS) <= set(fields):
            raise ConfigError(
                "fm", fm_name, "fusion 'pilora' trains LoRA adapters inside the foundation "
                "model's backbone, and this FM has none: use --fm hf",
                hint="hf is a transformers model with LoRA via peft: the default minilm "
                "for text, a ViT hub id via --fm-opt model=... for images")
        o = build_options(cls.Options, config.fusion_options, component="fusion 'pilora'",
                          table="fusion_options")
        wanted: dict[str, Any] = {"lora": True, "lora_r": o.rank * config.tasks,
                                  "lora_alpha": o.lora_alpha * config.tasks, "head": "linear"}
        if "adapter_cache" in fields:
            wanted["adapter_cache"] = True
        built = build_options(foundation_model.Options, {**wanted, **config.fm_options},
                              component=f"foundation model {fm_name!r}", table="fm_options")
        for key in _FM_FIELDS:
            if getattr(built, key) != wanted[key]:
                if key == "lora":
                    how = "it trains LoRA adapters"
                elif key == "head":
                    how = "it keeps its class prototypes in the linear head"
                else:
                    per = "rank" if key == "lora_r" else "lora_alpha"
                    how = (f"it sets it to {per} x tasks (one LoRA block per task); set the "
                           f"per-task value with --fusion-opt {per}=...")
                raise ConfigError(f"fm_options.{key}", getattr(built, key),
                                  f"fusion 'pilora' needs {wanted[key]!r}: {how}",
                                  hint=f"leave fm_options.{key} unset")
        return wanted

    # ----------------------------------------------------------------- server

    def setup(self, context: Any) -> None:
        super().setup(context)
        fm = context.foundation_model
        #: the global FM part (starts as the FM's initial part)
        self.state: dict[str, Any] | None = fm.trainable_state() if fm is not None else None
        self.known: list[int] = []

    def fuse(self, round_info: RoundInfo, uploads: Sequence[Upload],
             failures: Sequence[Failure]) -> FusionResult:
        import torch

        parts = [u for u in uploads if u.fm_state is not None]
        if not parts:
            return FusionResult(downloads={})
        base = self.state if self.state is not None else parts[0].fm_state
        state = {k: v.clone() for k, v in base.items()}
        t, r = round_info.task, self.options.rank
        total = float(sum(u.num_examples for u in parts))
        cur = lora.block(t, r)
        for key in state:
            if key.startswith("head."):
                continue
            if ".lora_A." in key or ".lora_B." in key:  # the current task's block only
                idx = (cur, slice(None)) if ".lora_A." in key else (slice(None), cur)
                acc = torch.zeros_like(state[key][idx], dtype=torch.float64)
                for u in parts:
                    acc += u.fm_state[key][idx].to(torch.float64) * (u.num_examples / total)
                state[key][idx] = acc.to(state[key].dtype)
            elif torch.is_floating_point(state[key]):  # any other adapter tensor: FedAvg
                acc = sum(u.fm_state[key].to(torch.float64) * (u.num_examples / total)
                          for u in parts)
                state[key] = acc.to(state[key].dtype)
        weights = {}
        if "head.weight" in state:
            classes = sorted({int(c) for u in parts
                              for c in u.metadata.get("task_classes", ())})
            weights = self._fuse_prototypes(state, parts, classes)
            state["head.bias"] = prototypes.head_bias(state["head.weight"]).to(
                state["head.bias"].dtype)
        self.state = state
        self.known = sorted(set(self.known).union(*(u.classes_seen for u in parts)))
        known = tuple(self.known)
        return FusionResult(
            downloads={k: Download(fm_state=state, fm_classes=known)
                       for k in self.context.client_ids},
            global_fm_state=state, global_fm_classes=known,
            metadata={"fused_clients": [u.client_id for u in parts],
                      "prototype_weights": weights})

    def _fuse_prototypes(self, state: dict[str, Any], parts: Sequence[Upload],
                         classes: list[int]) -> dict[str, list[float]]:
        """Each class's prototype: the re-weighted sum of the prototypes of the clients
        that hold examples of it (the others did not learn it); unchanged when none."""
        import torch

        out = {}
        for c in classes:
            holders, means = [], []
            for u in parts:
                have = u.payload.get(PAYLOAD_CLASSES)
                if have is None:
                    continue
                hit = (have == c).nonzero().flatten()
                if len(hit):
                    holders.append(u)
                    means.append(u.payload[PAYLOAD_MEANS][int(hit[0])])
            if not holders:
                continue
            protos = torch.stack([u.fm_state["head.weight"][c] for u in holders])
            w = prototypes.reweight(protos, torch.stack(means),
                                    self.options.reweight_temperature)
            state["head.weight"][c] = (w.unsqueeze(1) * protos.to(torch.float64)).sum(0).to(
                state["head.weight"].dtype)
            out[str(c)] = [round(float(v), 6) for v in w]
        return out

    def state_dict(self) -> dict[str, Any]:
        if self.state is None:
            return {}
        return {"state": self.state, "known": list(self.known)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            self.state, self.known = dict(state["state"]), [int(c) for c in state["known"]]
