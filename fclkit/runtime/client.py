"""A client: its private task stream, its small model, its strategy, its view of the FM."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from ..interfaces import ContinualStrategy, FoundationModel
from ..messages import Download, RoundInfo, Upload
from ..stream import ClientStream
from .seeding import derive_seed
from .server import split_fm_classes

EVAL_BATCH = 512


def accuracy(forward: Any, x: Any, y: Any) -> float:
    """Top-1 accuracy of ``forward`` (a callable returning logits) on ``x, y``."""
    import torch

    if len(y) == 0:
        return float("nan")
    correct = 0
    with torch.no_grad():
        for start in range(0, len(y), EVAL_BATCH):
            logits = forward(x[start:start + EVAL_BATCH])
            correct += int((logits.argmax(dim=1).cpu() == y[start:start + EVAL_BATCH]).sum())
    return correct / len(y)


def _restricted(forward: Any, classes: list[int] | None) -> Any:
    """``forward`` whose predictions are limited to ``classes`` (all when empty/None): an FM
    head's columns of classes it was never fused on are untrained and must not win."""
    if not classes:
        return forward
    import torch

    def masked(x: Any) -> Any:
        logits = forward(x)
        mask = torch.full((logits.shape[1],), float("-inf"), device=logits.device)
        mask[torch.tensor(classes, dtype=torch.long, device=logits.device)] = 0.0
        return logits + mask

    return masked


class Client:
    """Everything one client holds. All of it can be saved with :meth:`state_dict`."""

    def __init__(self, client_id: int, stream: ClientStream, architecture: str,
                 model: Any, strategy: ContinualStrategy, *, epochs: int, seed: int,
                 device: str, foundation_model: FoundationModel | None = None,
                 fm_state: Mapping[str, Any] | None = None, guidance_weight: float = 0.0,
                 guidance_temperature: float = 2.0, guidance_examples: str = "fm-better") -> None:
        self.client_id = client_id
        self.stream = stream
        self.architecture = architecture
        self.model = model
        self.strategy = strategy
        self.epochs = epochs
        self.seed = seed
        self.device = device
        self.foundation_model = foundation_model
        self.fm_state = dict(fm_state) if fm_state is not None else None
        self.classes_seen: set[int] = set()
        self.guidance_weight = guidance_weight
        self.guidance_temperature = guidance_temperature
        self.guidance_examples = guidance_examples
        #: classes the personalised FM part has been fused on: it predicts among these only
        #: and its guidance covers only these (empty: every class, and no guidance)
        self.fm_classes: list[int] = []
        #: False when the fusion asks for no guidance (``metadata["fm_guidance"]``)
        self.fm_guidance = True

    # ------------------------------------------------------------ messages

    def apply(self, download: Download | None) -> None:
        """Load what the server sent (weights are copied into the live modules)."""
        if download is None:
            return
        if download.small_state is not None:
            self.model.load_state_dict(download.small_state)
        if download.fm_state is not None:
            self.fm_state = dict(download.fm_state)
            self.fm_classes = sorted(download.metadata.get("fm_classes", []))
            self.fm_guidance = bool(download.metadata.get("fm_guidance", True))

    def fit(self, round_info: RoundInfo, download: Download | None) -> Upload:
        """Apply ``download``, train one round on the current task, return the upload."""
        import torch

        self.apply(download)
        task = self.stream.tasks[round_info.task]
        torch.manual_seed(derive_seed(self.seed, "fit", self.client_id, round_info.task,
                                      round_info.round))
        started = time.perf_counter()
        report = self.strategy.train_round(task, round_info=round_info, epochs=self.epochs,
                                           extra_losses=self.extra_losses(task))
        seconds = time.perf_counter() - started
        self.model.zero_grad(set_to_none=True)  # gradients are not state: free them
        self.classes_seen.update(task.classes)
        return Upload(
            client_id=self.client_id, architecture=self.architecture,
            classes_seen=tuple(sorted(self.classes_seen)), num_examples=report.num_examples,
            small_state={k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            metadata={"task": round_info.task, "round": round_info.round,
                      "task_classes": list(task.classes),
                      "train_loss": report.loss, "steps": report.steps,
                      "train_seconds": seconds})

    def extra_losses(self, task: Any) -> list:
        """Loss terms added to the strategy's loss: the foundation model's guidance.

        Small Model Continual Fine-tuning: the small model also distils the
        client's personalised FM (``guidance_weight * tau^2 * KL(p_FM || p_small)``),
        restricted to the classes that FM part has been fused on (none before the
        first fusion, so no guidance then). ``guidance_examples`` uses each
        example's label to skip where the FM would mislead: ``"fm-correct"`` keeps
        the examples the FM classifies correctly, ``"fm-better"`` those where the FM
        gives the true class more probability than the small model does (examples
        of classes the FM does not know are kept in both): each skipped example
        gets weight 0 in the batch mean, each kept one the same weight as in ``"all"``. The FM's
        backbone features are cached by the FM, so the guidance costs a head pass
        per mini-batch.
        """
        fm = self.foundation_model
        if (fm is None or self.guidance_weight == 0 or self.fm_state is None
                or not self.fm_classes or not self.fm_guidance):
            return []
        import torch

        from ..distillation import kd_loss_to_targets, soft_targets

        fm.load_trainable_state(self.fm_state)
        classes = torch.tensor(self.fm_classes, dtype=torch.long)
        weight, tau = self.guidance_weight, self.guidance_temperature

        mode = self.guidance_examples

        def fm_guidance(x: Any, y: Any, logits: Any) -> Any:
            with torch.no_grad():
                teacher = fm.forward(x).to(logits.device)
            targets = soft_targets(teacher, tau, classes)
            if mode == "all":
                return weight * kd_loss_to_targets(logits, targets, tau, classes)
            cols, y = classes.to(logits.device), y.to(logits.device)
            fm_probs = teacher.index_select(1, cols).softmax(dim=1)
            if mode == "fm-better":  # p(true class): FM against the small model
                hit = cols.unsqueeze(0) == y.unsqueeze(1)
                small_probs = logits.detach().index_select(1, cols).softmax(dim=1)
                helps = (fm_probs * hit).sum(1) > (small_probs * hit).sum(1)
            else:  # "fm-correct"
                helps = cols[fm_probs.argmax(dim=1)] == y
            keep = ~torch.isin(y, cols) | helps  # classes the FM does not know: always
            return weight * kd_loss_to_targets(logits, targets, tau, classes,
                                               weights=keep.float())

        return [fm_guidance]

    # ---------------------------------------------------------- evaluation

    def evaluate(self, global_fm_state: Mapping[str, Any] | None) -> dict[str, list[float]]:
        """Accuracy of every model this client can evaluate, on every task of its stream."""
        was_training = self.model.training
        self.model.eval()
        try:
            out = {"small": [self._acc(self._small_forward, t) for t in self.stream.tasks]}
        finally:
            self.model.train(was_training)
        fm = self.foundation_model
        if fm is not None:
            if self.fm_state is not None:
                fm.load_trainable_state(self.fm_state)
                forward = _restricted(fm.forward, self.fm_classes)
                out["fm"] = [self._acc(forward, t) for t in self.stream.tasks]
            state, classes = split_fm_classes(global_fm_state)
            if state is not None:
                fm.load_trainable_state(state)
                forward = _restricted(fm.forward, classes)
                out["fm_global"] = [self._acc(forward, t) for t in self.stream.tasks]
        return out

    def _small_forward(self, x: Any) -> Any:
        return self.model(x.to(self.device))

    @staticmethod
    def _acc(forward: Any, task: Any) -> float:
        return accuracy(forward, task.x_test, task.y_test)

    # ------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild this client elsewhere (model, strategy, FM part)."""
        return {
            "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "strategy": self.strategy.state_dict(),
            "fm_state": self.fm_state,
            "fm_classes": list(self.fm_classes),
            "fm_guidance": self.fm_guidance,
            "classes_seen": sorted(self.classes_seen),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.strategy.load_state_dict(state["strategy"])
        self.fm_state = dict(state["fm_state"]) if state.get("fm_state") is not None else None
        self.classes_seen = set(state.get("classes_seen", []))
        self.fm_classes = list(state.get("fm_classes", []))
        self.fm_guidance = bool(state.get("fm_guidance", True))
