"""GLFC's client half: the local losses against the old global model, and the prototype
gradients for the proxy server.

* ``receive``: the download of a task's last round (applied before the evaluation)
  carries the proxy server's choice of old model (``Download.metadata["glfc"]``) and,
  when that is not the last round's global model the download itself holds, the chosen
  model's weights (``Download.payload``, keys ``glfc/old/<name>``). The client keeps it
  as the old model of the next task, with the classes the global model had learnt.
* ``extra_losses``: from the second task on, the term of
  :func:`~fclkit_builtins.glfc.losses.glfc_loss_term`, which turns the strategy's mean
  cross-entropy into ``gc_weight * L_GC + rd_weight * L_RD``, ``L_RD`` distilling from
  the old model. A client that never received a choice (e.g. the server got no upload in
  a task's last round) distils from the global model it holds when the task starts: the
  previous task's last one.
* ``payload``: in the first round of a task that the client trains in, after training,
  the perturbed prototype gradients of
  :func:`~fclkit_builtins.glfc.proxy.prototype_gradients`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from fclkit.interfaces import ClientRound, ClientSide, ExtraLoss
from fclkit.messages import Download

#: Download.payload keys of the chosen old model's weights
OLD_PREFIX = "glfc/old/"


def _copy_state(state: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v.detach().cpu().clone() for k, v in state.items()}


class GLFCClient(ClientSide):
    """Gradient compensation + relation distillation terms; prototype gradients."""

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        #: the task this client trains (None before its first round)
        self.task: int | None = None
        #: classes this client has trained on, over every task so far
        self.seen: list[int] = []
        #: the old model's weights, the (task, round) of the global model they are (round
        #: -1: the global model the client held when the next task started) and the classes
        #: that model had learnt
        self.old_model: dict[str, Any] | None = None
        self.old_source: list[int] | None = None
        self.old_learned: list[int] = []
        #: the last task whose prototype gradients this client sent
        self.sent_task: int | None = None

    @property
    def _proxy(self) -> bool:
        return bool(getattr(self.options, "proxy", True))

    # ------------------------------------------------------------ messages

    def receive(self, download: Download) -> None:
        choice = download.metadata.get("glfc") if download.metadata else None
        if not isinstance(choice, Mapping) or "old_task" not in choice:
            return
        payload = getattr(download, "payload", None) or {}
        chosen = {k[len(OLD_PREFIX):]: v for k, v in payload.items() if k.startswith(OLD_PREFIX)}
        state = chosen or download.small_state
        if not state:
            return
        self.old_model = _copy_state(state)
        self.old_source = [int(choice["old_task"]), int(choice["old_round"])]
        self.old_learned = sorted(int(c) for c in choice.get("old_classes", ()))

    # --------------------------------------------------------------- the round

    def _start_task(self, round: ClientRound) -> None:
        task = round.round_info.task
        if task > 0 and (self.old_source is None or self.old_source[0] != task - 1):
            # no choice arrived for the previous task: the global model held now
            self.old_model = _copy_state(round.small_model.state_dict())
            self.old_source = [task - 1, -1]
            self.old_learned = list(self.seen)
        self.task = task
        self.seen = sorted(set(self.seen) | {int(c) for c in round.task.classes})

    def extra_losses(self, round: ClientRound) -> Sequence[ExtraLoss]:
        from .losses import glfc_loss_term

        if round.round_info.task != self.task:
            self._start_task(round)
        new = [int(c) for c in round.task.classes]
        old = [c for c in self.old_learned if c not in new]
        if self.old_model is None or not old:
            return []  # the first task: plain cross-entropy (L_GC with every weight 1)
        teacher = copy.deepcopy(round.small_model)
        teacher.load_state_dict(self.old_model)
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        o = self.options
        return [glfc_loss_term(teacher, old_classes=old, new_classes=new,
                               gc_weight=float(o.gc_weight), rd_weight=float(o.rd_weight),
                               temperature=float(o.temperature))]

    def payload(self, round: ClientRound) -> dict[str, Any]:
        task = round.round_info.task
        if not self._proxy or self.sent_task == task:
            return {}
        from .proxy import prototype_gradients

        self.sent_task = task
        o, data = self.options, round.task
        return prototype_gradients(round.small_model, data.x_train, data.y_train, data.classes,
                                   num_classes=round.context.num_classes,
                                   seed=round.context.seed, steps=o.proto_steps,
                                   lr=o.proto_lr)

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        return {"task": self.task, "seen": list(self.seen), "old_model": self.old_model,
                "old_source": self.old_source, "old_learned": list(self.old_learned),
                "sent_task": self.sent_task}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.task = state.get("task")
        self.seen = [int(c) for c in state.get("seen", [])]
        old = state.get("old_model")
        self.old_model = None if old is None else dict(old)
        source = state.get("old_source")
        self.old_source = None if source is None else [int(s) for s in source]
        self.old_learned = [int(c) for c in state.get("old_learned", [])]
        self.sent_task = state.get("sent_task")
