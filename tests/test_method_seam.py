"""A federated method is one unit: its fusion names its client side (``ClientSide``), and
the core client runs whatever that asks -- extra loss terms, which parts it trains, what
it uploads besides its weights."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest

import fclkit
from fclkit.interfaces import ClientSide, KnowledgeFusion
from fclkit.messages import Download, FusionResult

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(clients=2, tasks=2, rounds=2, epochs=1, loggers="none", threads=1)


class TrainsTheFMPart(ClientSide):
    """Clients train the FM's part on their own data and upload their class counts."""

    trains = frozenset({"fm"})

    def payload(self, round: Any) -> dict[str, Any]:
        import torch

        counts = torch.bincount(round.task.y_train, minlength=round.context.num_classes)
        return {"class_counts": counts.float()}


class FMPartAverage(KnowledgeFusion):
    """A test method: the server averages the FM parts its clients trained (an FM-side
    FedAvg) and keeps every upload for the test to look at."""

    name = "test-fm-part-average"
    requires_foundation_model = True
    ClientSide = TrainsTheFMPart
    uploads: list = []

    def fuse(self, round_info, uploads, failures):
        import torch

        type(self).uploads.append(list(uploads))
        states = [u.fm_state for u in uploads]
        average = {k: torch.stack([s[k] for s in states]).mean(0) for k in states[0]}
        classes = tuple(sorted(set().union(*(u.classes_seen for u in uploads))))
        return FusionResult(
            downloads={k: Download(fm_state=average, fm_classes=classes)
                       for k in self.context.client_ids},
            global_fm_state=average, global_fm_classes=classes)


def test_a_method_whose_clients_train_the_fm_part_and_upload_a_payload():
    FMPartAverage.uploads = []
    config = fclkit.ExperimentConfig(fusion="test-fm-part-average", cl="naive", **TINY)
    result = fclkit.run(config, components=[FMPartAverage], write_results=False)
    rounds = FMPartAverage.uploads
    assert len(rounds) == 4 and all(len(r) == 2 for r in rounds)
    first = rounds[0][0]
    assert first.fm_state is not None  # the trained FM part is uploaded
    assert first.payload["class_counts"].sum() == first.num_examples  # and the payload
    # the clients trained the FM part, not their small models ("small" not in trains)
    initial = rounds[0][1].small_state
    assert all((u.small_state[k] == initial[k]).all() for r in rounds for u in r
               for k in initial)
    assert any((rounds[0][0].fm_state[k] != rounds[-1][0].fm_state[k]).any()
               for k in first.fm_state)
    fm = result.summary("fm")
    assert fm["accuracy_matrix"][0][0] > 0.6  # the FM part learnt task 1 on the clients
    assert result.summary("small")["accuracy_matrix"][0][0] < 0.5  # never trained


class CountsItsLossTerms(ClientSide):
    """Adds a zero loss term that counts how often the strategy calls it."""

    calls: dict[int, int] = defaultdict(int)

    def extra_losses(self, round: Any) -> list:
        cid = round.client_id

        def term(x: Any, y: Any, logits: Any) -> Any:
            type(self).calls[cid] += 1
            return logits.sum() * 0.0

        return [term]


class NaNPayload(ClientSide):
    """Client 1 uploads a non-finite payload in the first round."""

    def payload(self, round: Any) -> dict[str, Any]:
        import torch

        bad = round.client_id == 1 and (round.round_info.task, round.round_info.round) == (0, 0)
        return {"score": torch.tensor([float("nan") if bad else 1.0])}


def _fedavg_with(client_side: type, name: str) -> type:
    """FedAvg with another client side; it keeps the uploads it fuses in ``uploads``."""
    from fclkit_builtins.fusion.fedavg import FedAvg

    uploads: list = []

    def fuse(self, round_info, round_uploads, failures):
        uploads.extend(round_uploads)
        return FedAvg.fuse(self, round_info, round_uploads, failures)

    return type("Method", (FedAvg,), {"name": name, "ClientSide": client_side, "fuse": fuse,
                                      "uploads": uploads})


def test_the_client_sides_loss_terms_reach_every_minibatch_of_a_real_strategy():
    CountsItsLossTerms.calls.clear()
    method = _fedavg_with(CountsItsLossTerms, "test-counting-fedavg")
    config = fclkit.ExperimentConfig(fusion=method.name, cl="ewc", **TINY)
    result = fclkit.run(config, components=[method], write_results=False)
    assert result.metrics["failures"] == []
    # one call per optimizer step of Avalanche's EWC, in every round of every client
    steps: dict[int, int] = defaultdict(int)
    for u in method.uploads:
        steps[u.client_id] += u.metadata["steps"]
    assert len(method.uploads) == 8 and min(steps.values()) > 0
    assert dict(CountsItsLossTerms.calls) == dict(steps)


def test_a_non_finite_payload_is_rejected_and_the_client_rolled_back():
    method = _fedavg_with(NaNPayload, "test-nan-payload")
    config = fclkit.ExperimentConfig(fusion=method.name, cl="naive", **TINY)
    result = fclkit.run(config, components=[method], write_results=False)
    failures = result.metrics["failures"]
    assert [(f["task"], f["round"], f["client"]) for f in failures] == [(0, 0, 1)]
    assert "payload score holds non-finite values" in failures[0]["reason"]


def test_fm_trained_on_clients_needs_a_foundation_model():
    method = type("NoFM", (FMPartAverage,), {"name": "test-fm-no-fm",
                                             "requires_foundation_model": False})
    config = fclkit.ExperimentConfig(fusion=method.name, fm="none", **TINY)
    with pytest.raises(fclkit.IncompatibleComponentsError, match="needs a foundation model"):
        fclkit.run(config, components=[method], write_results=False)
