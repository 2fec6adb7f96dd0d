"""Baseline fusion ``fm-fedavg``: FM-side federated continual learning.

Each client trains the foundation model's trainable part (the head over the frozen
backbone, plus adapters when the FM has them) on its own private data; the server
averages the clients' parts, weighted by their example counts, and sends the average to
every client with the classes the clients have seen (``fm_classes``). The small models
take no part: by default they are not trained at all (``train_small = true`` trains them
with the ``--cl`` strategy, locally, never fused).

Against forgetting, each client's FM training (:class:`ReplayFMPart`) is

* cross-entropy restricted to the classes *this client* has seen so far (older tasks'
  and the current one's: not the other clients' classes, which it has no data for);
* replay from a small per-client exemplar memory of ``mem_size`` examples of earlier
  tasks, stored as what the FM's ``precompute`` returns (backbone features for a frozen
  backbone, the inputs themselves when adapters train): every mini-batch of the current
  task is joined by as many memory examples, drawn at random; the memory is filled at a
  task's last round (``storage_policy``: ``class-balanced`` or ``reservoir``), like
  Avalanche's replay, and kept in the client side's state (checkpointed, rolled back).

It does not use the ``--cl`` strategy for the FM part: an Avalanche strategy owns and
trains one ``torch.nn.Module`` end to end (the small model), while the FM part is a set
of tensors swapped in and out of a model shared by every client of the process, trained
on cached features; replay is the strategy reproduced here, with the same memory size as
``--cl replay``'s default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from fclkit.config import boolean, int_at_least, one_of, positive_float, setting
from fclkit.interfaces import ClientRound, ClientSide, KnowledgeFusion, TrainReport
from fclkit.messages import Download, Failure, FusionResult, RoundInfo, Upload
from fclkit_builtins.fusion.fedavg import weighted_average


class ReplayFMPart(ClientSide):
    """Trains the FM part on the client's task plus a replayed exemplar memory."""

    trains = frozenset({"fm"})

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        if options is not None and getattr(options, "train_small", False):
            self.trains = frozenset({"small", "fm"})
        self.memory_x: Any = None  # rows of the FM's precompute() output
        self.memory_y: Any = None
        self.offered = 0  # examples offered to the memory so far (reservoir sampling)
        self.classes: list[int] = []  # classes this client has trained the FM part on

    # ------------------------------------------------------------- training

    def train_foundation(self, round: ClientRound) -> TrainReport:
        import torch
        import torch.nn.functional as F

        fm = round.foundation_model
        if fm is None:
            raise ValueError("fm-fedavg trains the foundation model's part, and the run has "
                             "no foundation model")
        task = round.task
        x, y = task.x_train, task.y_train
        z = fm.precompute(x)  # the frozen part runs once (and is cached by the FM)
        classes = sorted(set(self.classes) | {int(c) for c in task.classes})
        cols = torch.tensor(classes, dtype=torch.long)
        position = torch.full((round.context.num_classes,), -1, dtype=torch.long)
        position[cols] = torch.arange(len(classes))
        memory = self.memory_y is not None and len(self.memory_y) > 0
        optimizer = torch.optim.Adam(fm.trainable_parameters(), lr=self.options.lr)
        bs, losses = round.context.batch_size, []
        for _ in range(round.epochs):
            for idx in torch.randperm(len(y)).split(bs):
                zb, yb = z[idx], y[idx]
                if memory:
                    pick = torch.randperm(len(self.memory_y))[:bs]
                    zb = torch.cat([zb, self.memory_x[pick].to(zb.device)])
                    yb = torch.cat([yb, self.memory_y[pick]])
                logits = fm.forward_precomputed(zb)
                logits = logits.index_select(1, cols.to(logits.device))
                loss = F.cross_entropy(logits, position[yb].to(logits.device))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
        self.classes = classes
        if round.round_info.is_last_round:
            self._remember(z.detach().cpu(), y.cpu())
        return TrainReport(num_examples=len(y),
                           loss=sum(losses) / len(losses) if losses else float("nan"),
                           steps=len(losses))

    def _remember(self, z: Any, y: Any) -> None:
        """Add a finished task's examples to the memory (``storage_policy``)."""
        import torch

        size = self.options.mem_size
        if size == 0 or len(y) == 0:
            return
        if self.memory_y is None:
            self.memory_x, self.memory_y = z[:0].clone(), y[:0].clone()
        if self.options.storage_policy == "reservoir":
            mx, my = list(self.memory_x), list(self.memory_y)
            for i in range(len(y)):
                self.offered += 1
                if len(my) < size:
                    mx.append(z[i])
                    my.append(y[i])
                else:
                    j = int(torch.randint(self.offered, ()))
                    if j < size:
                        mx[j], my[j] = z[i], y[i]
            self.memory_x, self.memory_y = torch.stack(mx), torch.stack(my)
            return
        # class-balanced: an equal share per class seen so far (the remainder to the
        # smallest class ids); the older examples of a class are kept first
        order = torch.randperm(len(y))
        all_x = torch.cat([self.memory_x, z[order]])
        all_y = torch.cat([self.memory_y, y[order]])
        self.offered += len(y)
        present = sorted(int(c) for c in torch.unique(all_y))
        quota, extra = divmod(size, len(present))
        keep = []
        for i, c in enumerate(present):
            rows = (all_y == c).nonzero().flatten()
            keep.append(rows[:quota + (1 if i < extra else 0)])
        rows = torch.cat(keep)
        self.memory_x, self.memory_y = all_x[rows].clone(), all_y[rows].clone()

    # ---------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"offered": self.offered, "classes": list(self.classes)}
        if self.memory_y is not None:
            state["memory_x"], state["memory_y"] = self.memory_x, self.memory_y
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.offered = int(state.get("offered", 0))
        self.classes = [int(c) for c in state.get("classes", [])]
        self.memory_x = state.get("memory_x")
        self.memory_y = state.get("memory_y")


class FMFedAvg(KnowledgeFusion):
    name = "fm-fedavg"
    description = ("baseline: clients train the FM's part on their own data with a replay "
                   "memory of backbone features; the server averages the parts")
    requires_foundation_model = True
    ClientSide = ReplayFMPart

    @attrs.frozen
    class Options:
        mem_size: int = setting(
            200, "clients: exemplars of earlier tasks kept per client for the FM part's "
            "replay (backbone features; 0: no memory)", int_at_least(0))
        storage_policy: str = setting(
            "class-balanced", "clients: how the memory is filled at a task's end: "
            "'class-balanced' (equal share per class seen) or 'reservoir' (reservoir "
            "sampling over every example seen)", one_of("class-balanced", "reservoir"))
        lr: float = setting(
            5e-3, "clients: Adam learning rate of the FM part (epochs and batch size: the "
            "run's)", positive_float)
        train_small: bool = setting(
            False, "clients: also train the small models with the --cl strategy (locally: "
            "they are never fused); false: they stay untrained", boolean)

    def setup(self, context: Any) -> None:
        super().setup(context)
        self.state: dict[str, Any] | None = None
        self.known: list[int] = []

    def fuse(self, round_info: RoundInfo, uploads: Sequence[Upload],
             failures: Sequence[Failure]) -> FusionResult:
        parts = [u for u in uploads if u.fm_state is not None]
        if not parts:
            return FusionResult(downloads={})
        self.state = weighted_average([u.fm_state for u in parts],
                                      [u.num_examples for u in parts])
        self.known = sorted(set(self.known).union(*(u.classes_seen for u in parts)))
        classes = tuple(self.known)
        return FusionResult(
            downloads={k: Download(fm_state=self.state, fm_classes=classes)
                       for k in self.context.client_ids},
            global_fm_state=self.state, global_fm_classes=classes,
            metadata={"fused_clients": [u.client_id for u in parts]})

    def state_dict(self) -> dict[str, Any]:
        if self.state is None:
            return {}
        return {"state": self.state, "known": list(self.known)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            self.state, self.known = dict(state["state"]), list(state["known"])
