"""Images kept as bytes (uint8): every model reads them as float32 in [0, 1], so a run on
uint8 images gives exactly the results of the same run on ``x / 255`` as floats."""

from __future__ import annotations

import attrs
import pytest
import torch

import fclkit
from fclkit.stream import images_as_float, read_images_as_float
from fclkit_builtins.digits.benchmark import DigitsBenchmark

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(clients=2, tasks=2, rounds=1, epochs=1, threads=1, loggers=("none",),
            checkpoint=False, cache_dir="none")


def _map_stream(stream, fn):
    """The stream with ``fn`` applied to every input tensor (the public set's too)."""
    clients = tuple(attrs.evolve(c, tasks=tuple(
        attrs.evolve(t, x_train=fn(t.x_train), x_test=fn(t.x_test)) for t in c.tasks))
        for c in stream.clients)
    public = None if stream.public is None else attrs.evolve(stream.public,
                                                             x=fn(stream.public.x))
    return attrs.evolve(stream, clients=clients, public=public)


def _as_bytes(x):
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


class ByteDigits(DigitsBenchmark):
    """digits with every image stored as uint8."""

    name = "byte-digits"

    def build(self, spec):
        return _map_stream(super().build(spec), _as_bytes)


class QuantisedDigits(DigitsBenchmark):
    """The same images as ByteDigits, as float32 ``x / 255``."""

    name = "quantised-digits"

    def build(self, spec):
        return _map_stream(super().build(spec), lambda x: _as_bytes(x).float() / 255)


def test_images_as_float_reads_bytes_only():
    x = torch.tensor([[0, 51, 255]], dtype=torch.uint8)
    assert torch.equal(images_as_float(x), torch.tensor([[0.0, 0.2, 1.0]]))
    tokens = torch.tensor([[3, 7]])  # token ids (int64) pass unchanged
    assert images_as_float(tokens) is tokens
    floats = torch.rand(2, 3)
    assert images_as_float(floats) is floats


def test_a_model_reads_uint8_inputs_as_x_over_255():
    torch.manual_seed(0)
    model = read_images_as_float(read_images_as_float(torch.nn.Linear(4, 2)))
    assert len(model._forward_pre_hooks) == 1  # installed once
    x = torch.randint(0, 256, (5, 4), dtype=torch.uint8)
    assert torch.equal(model(x), model(x.float() / 255))


@pytest.mark.parametrize("fusion, cl", [("one-by-one", "replay"), ("feddf", "der"),
                                        ("glfc", "ewc")])
def test_a_run_on_uint8_images_equals_the_run_on_their_floats(fusion, cl):
    """Small models, their strategies, the FM's features and the fusion all read the bytes
    the same way as their float values."""
    stream = ByteDigits(ByteDigits.Options()).build(fclkit.interfaces.StreamSpec(
        num_clients=2, num_tasks=2, seed=0, partition="iid", dirichlet_alpha=0.5,
        public_fraction=0.1))
    assert stream.clients[0].tasks[0].x_train.dtype == torch.uint8
    assert stream.public.x.dtype == torch.uint8
    results = {}
    for bench in (ByteDigits, QuantisedDigits):
        config = fclkit.ExperimentConfig(benchmark=bench.name, fusion=fusion, cl=cl, **TINY)
        metrics = fclkit.run(config, components=[bench], write_results=False).metrics
        results[bench.name] = {m: metrics["mean"][m] for m in metrics["models"]}
    assert results["byte-digits"] == results["quantised-digits"]
    assert "small" in results["byte-digits"]
