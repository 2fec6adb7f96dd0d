"""A client: its private task stream, its small model, its strategy, its method's client
side, its view of the FM -- and the one guard every engine runs a client's round under.

Every engine (in-process, a Flower node, a Ray actor) runs a round with
:meth:`Client.fit_guarded`: the round is tried, timed, its upload validated, and
the client rolled back to its state before the round when any of these fails, so
a faulty or diverged client takes part again, cleanly, in the next round.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from typing import Any

import attrs

from ..interfaces import ClientRound, ClientSide, ContinualStrategy, FoundationModel, TrainReport
from ..messages import Download, Failure, RoundInfo, Upload
from ..serialization import tensors_digest
from ..stream import ClientStream
from .seeding import derive_seed

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


class EvaluationMemo:
    """The accuracies one evaluation has computed, by what decides them: which model
    (its kind, architecture and a digest of its weights) on which test tensors.

    Clients that hold identical models -- after a FedAvg download every client holds
    the global model -- and share their test sets (a benchmark's test split of a
    task is one tensor for every client) are evaluated once, not once per client:
    at 50 FedAvg clients on split-fmnist an evaluation takes 50 times less. An
    executor passes one memo to every client of an evaluation (the local engine
    does); the tensors must stay alive while it is in use (a stream's do).
    """

    def __init__(self) -> None:
        self._accuracies: dict[tuple[Any, ...], float] = {}
        #: accuracies answered from the memo / computed
        self.hits = self.misses = 0

    def accuracy(self, model_key: tuple[Any, ...], forward: Any, task: Any) -> float:
        key = (*model_key, id(task.x_test), id(task.y_test))
        found = self._accuracies.get(key)
        if found is not None:
            self.hits += 1
            return found
        self.misses += 1
        self._accuracies[key] = value = accuracy(forward, task.x_test, task.y_test)
        return value


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


@attrs.frozen(eq=False)
class RoundOutcome:
    """What :meth:`Client.fit_guarded` gives an engine.

    ``upload`` is what the engine passes on to the core (which validates it again and
    records a rejection); ``failure`` is set instead when the round raised or ran out
    of time. When the validator rejected the upload, ``rejected`` holds why and the
    client has been rolled back.
    """

    upload: Upload | None
    failure: Failure | None = None
    rejected: str | None = None


class Client:
    """Everything one client holds. All of it can be saved with :meth:`state_dict`."""

    def __init__(self, client_id: int, stream: ClientStream, architecture: str,
                 model: Any, strategy: ContinualStrategy, *, epochs: int, seed: int,
                 device: str, method: ClientSide | None = None,
                 foundation_model: FoundationModel | None = None,
                 fm_state: Mapping[str, Any] | None = None, validator: Any = None) -> None:
        self.client_id = client_id
        self.stream = stream
        self.architecture = architecture
        self.model = model
        self.strategy = strategy
        #: the client half of the run's federated method (the fusion's ``ClientSide``)
        self.method = method if method is not None else ClientSide()
        self.epochs = epochs
        self.seed = seed
        self.device = device
        self.foundation_model = foundation_model
        self.fm_state = dict(fm_state) if fm_state is not None else None
        self.classes_seen: set[int] = set()
        #: classes the personalised FM part has been fused on: it predicts among these only
        #: (empty: every class)
        self.fm_classes: list[int] = []
        #: checks this client's uploads (``UpdateValidator``; None: no check here)
        self.validator = validator

    # ------------------------------------------------------------ messages

    def apply(self, download: Download | None) -> None:
        """Load what the server sent (weights are copied into the live modules), then hand
        the download to the method's client side (``ClientSide.receive``)."""
        if download is None:
            return
        if download.small_state is not None:
            self.model.load_state_dict(download.small_state)
        if download.fm_state is not None:
            self.fm_state = dict(download.fm_state)
            self.fm_classes = sorted(download.fm_classes or ())
        self.method.receive(download)

    def fit(self, round_info: RoundInfo, download: Download | None) -> Upload:
        """Apply ``download``, train one round on the current task, return the upload.

        What is trained is the method's to say (``ClientSide.trains``): the small model
        with the strategy and the method's extra loss terms, and/or the FM's part.
        """
        import torch

        self.apply(download)
        task = self.stream.tasks[round_info.task]
        torch.manual_seed(derive_seed(self.seed, "fit", self.client_id, round_info.task,
                                      round_info.round))
        started = time.perf_counter()
        method = self.method
        current = self.round(round_info, download)
        report = TrainReport(num_examples=len(task.y_train))
        if "small" in method.trains:
            report = self.strategy.train_round(task, round_info=round_info,
                                               epochs=self.epochs,
                                               extra_losses=list(method.extra_losses(current)))
        fm_state = None
        if "fm" in method.trains:
            if self.foundation_model is None:
                raise RuntimeError(f"the method's client side ({type(method).__name__}) trains "
                                   "the foundation model's part, and this run has none")
            fm_report = method.train_foundation(current)
            self.fm_state = fm_state = self.foundation_model.trainable_state()
            if "small" not in method.trains:
                report = fm_report
        payload = dict(method.payload(current))
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
                      "train_seconds": seconds},
            fm_state=fm_state, payload=payload)

    def round(self, round_info: RoundInfo, download: Download | None = None) -> ClientRound:
        """This client's round as its method sees it; loads the client's FM part into the
        (shared) foundation model."""
        fm = self.foundation_model
        if fm is not None and self.fm_state is not None:
            fm.load_trainable_state(self.fm_state)
        return ClientRound(
            client_id=self.client_id, round_info=round_info,
            task=self.stream.tasks[round_info.task], small_model=self.model,
            context=self.strategy.context, epochs=self.epochs, foundation_model=fm,
            fm_classes=tuple(self.fm_classes), download=download)

    def fit_guarded(self, round_info: RoundInfo, download: Download | None, *,
                    timeout: float = 0.0) -> RoundOutcome:
        """:meth:`fit` under the guard every engine uses.

        A round that raises, takes longer than ``timeout`` seconds (0: no limit), or
        whose upload the validator rejects (e.g. NaN weights) rolls the client back to
        its state before the round, with ``download`` applied. Nothing here can stop a
        running Python function: a slow round is detected when it returns.
        """
        before = self._snapshot()
        started = time.perf_counter()
        try:
            upload = self.fit(round_info, download)
        except Exception as exc:  # one client's failure must not stop the round
            self._roll_back(before, download)
            return RoundOutcome(None, Failure(self.client_id, f"{type(exc).__name__}: {exc}",
                                              error=exc))
        took = time.perf_counter() - started
        if timeout and took > timeout:
            self._roll_back(before, download)
            return RoundOutcome(None, Failure(
                self.client_id, f"exceeded the time limit of {timeout:g}s (took {took:.1f}s)"))
        reason = None if self.validator is None else self.validator.check(upload)
        if reason is not None:
            self._roll_back(before, download)
        return RoundOutcome(upload, rejected=reason)

    def _snapshot(self) -> dict[str, Any]:
        """The state before a round. :meth:`state_dict` already copies the model; the
        strategy's and the method's state may hold live tensors (replay buffer, EWC
        importances, optimiser moments), so those are deep-copied."""
        state = self.state_dict()
        state["strategy"] = copy.deepcopy(state["strategy"])
        state["method"] = copy.deepcopy(state["method"])
        return state

    def _roll_back(self, before: dict[str, Any], download: Download | None) -> None:
        self.load_state_dict(before)
        self.apply(download)

    # ---------------------------------------------------------- evaluation

    def evaluate(self, global_fm: Download | None,
                 memo: EvaluationMemo | None = None) -> dict[str, list[float]]:
        """Accuracy of every model this client can evaluate, on every task of its stream:
        its small model, its FM part (``fm``) and the global FM part (``fm_global``).

        ``memo``, shared by the clients of one evaluation, answers a model and test set
        another client has already been evaluated on (:class:`EvaluationMemo`)."""
        memo = memo if memo is not None else EvaluationMemo()
        tasks = self.stream.tasks
        was_training = self.model.training
        self.model.eval()
        try:
            small = ("small", self.architecture, tensors_digest(self.model.state_dict()))
            out = {"small": [memo.accuracy(small, self._small_forward, t) for t in tasks]}
        finally:
            self.model.train(was_training)
        fm = self.foundation_model
        if fm is not None:
            parts = {}
            if self.fm_state is not None:
                parts["fm"] = (self.fm_state, self.fm_classes)
            if global_fm is not None and global_fm.fm_state is not None:
                parts["fm_global"] = (global_fm.fm_state, list(global_fm.fm_classes or ()))
            for name, (state, classes) in parts.items():
                fm.load_trainable_state(state)
                forward = _restricted(fm.forward, classes)
                key = ("fm", tensors_digest(state), tuple(classes or ()))
                out[name] = [memo.accuracy(key, forward, t) for t in tasks]
        return out

    def _small_forward(self, x: Any) -> Any:
        return self.model(x.to(self.device))

    # ------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild this client elsewhere (model, strategy, method's
        client side, FM part)."""
        return {
            "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "strategy": self.strategy.state_dict(),
            "method": self.method.state_dict(),
            "fm_state": self.fm_state,
            "fm_classes": list(self.fm_classes),
            "classes_seen": sorted(self.classes_seen),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.strategy.load_state_dict(state["strategy"])
        self.method.load_state_dict(state.get("method") or {})
        self.fm_state = dict(state["fm_state"]) if state.get("fm_state") is not None else None
        self.classes_seen = set(state.get("classes_seen", []))
        self.fm_classes = list(state.get("fm_classes", []))
