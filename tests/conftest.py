"""Shared fixtures. Third-party plugins are switched off so tests are hermetic."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

import fclkit
from fclkit.interfaces import ContinualStrategy, TrainReport


@pytest.fixture
def one_thread():
    """Tiny models train faster on one thread (and do not suffer from a busy machine);
    use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _hermetic_plugins(monkeypatch):
    """Only fclkit's own built-ins load unless a test allow-lists more."""
    monkeypatch.setenv("FCLKIT_LOAD_PLUGINS", "")
    monkeypatch.delenv("FCLKIT_DEBUG", raising=False)


class PlainSGD(ContinualStrategy):
    """Plain fine-tuning written directly in PyTorch (as research code would)."""

    name = "plain-sgd"
    description = "test strategy: plain SGD fine-tuning"

    def train_round(self, task, *, round_info, epochs, extra_losses: Sequence = ()):
        import torch

        opt = torch.optim.SGD(self.model.parameters(), lr=self.context.lr)
        self.model.train()
        n = task.num_train
        total, steps = 0.0, 0
        for _ in range(epochs):
            perm = torch.randperm(n)
            for start in range(0, n, self.context.batch_size):
                idx = perm[start:start + self.context.batch_size]
                x, y = task.x_train[idx], task.y_train[idx]
                logits = self.model(x)
                loss = torch.nn.functional.cross_entropy(logits, y)
                for term in extra_losses:
                    loss = loss + term(x, y, logits)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item()
                steps += 1
        return TrainReport(num_examples=n, loss=total / max(steps, 1), steps=steps)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


@pytest.fixture
def plain_sgd():
    return PlainSGD


@pytest.fixture
def tiny(tmp_path):
    """A tiny, fast configuration writing into a temporary folder."""
    return fclkit.ExperimentConfig(cl="plain-sgd", fusion="fedavg", clients=2, tasks=2, rounds=2,
                                   epochs=1, output=str(tmp_path / "runs"))


@pytest.fixture(autouse=True)
def _feature_cache_in_tmp(monkeypatch, tmp_path_factory):
    """The on-disk feature cache's default folder is a tmp dir, never the real home."""
    monkeypatch.setenv("FCLKIT_CACHE_DIR", str(tmp_path_factory.mktemp("fclkit-cache")))
