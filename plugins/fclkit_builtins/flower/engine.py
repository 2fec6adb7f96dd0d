"""The ``flower`` engine: :class:`FlowerEngine`, its ``Options``, and :func:`require_flower`.

Import-light (``attrs`` and ``fclkit`` only): the package imports it to register
the engine; flwr, Ray and torch are imported when a run starts (:mod:`.simulation`,
:mod:`.deployment`).
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

import attrs

from fclkit.config import boolean, float_in, int_at_least, one_of, setting
from fclkit.errors import ConfigError, FclkitError
from fclkit.interfaces import Engine

INSTALL_HINT = 'pip install "fclkit[flower]"'


def _installed(module: str) -> bool:
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require_flower(mode: str = "simulation") -> None:
    """Raise a one-line :class:`FclkitError` when Flower (or Ray, to simulate) is missing."""
    if not _installed("flwr"):
        raise FclkitError(f"the flower engine needs Flower (flwr), which is not installed: "
                          f'{INSTALL_HINT}')
    if mode == "simulation" and not _installed("ray"):
        raise FclkitError("the flower engine's simulation mode needs Ray, which is not "
                          f"installed: {INSTALL_HINT}")


def _address(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, str) or not value.rpartition(":")[2].isdigit():
        raise ConfigError(attribute.name, value, "must be HOST:PORT, e.g. 127.0.0.1:8000")


def _text(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, str):
        raise ConfigError(attribute.name, value, "must be a string")


class FlowerEngine(Engine):
    name = "flower"
    description = ("runs the clients through Flower: simulated on Ray, or on real SuperNodes "
                   "(needs fclkit[flower])")

    @attrs.frozen
    class Options:
        mode: str = setting(
            "simulation", "'simulation': clients as Ray actors on this machine or a Ray "
            "cluster; 'deployment': clients on SuperNodes connected to a SuperLink",
            one_of("simulation", "deployment"))
        num_cpus_per_client: float = setting(
            1.0, "simulation: CPUs Ray reserves for each client (clients run in parallel "
            "while CPUs last)", float_in(0.0, 1024.0, low_open=True))
        num_gpus_per_client: float = setting(
            0.0, "simulation: GPUs (or a fraction) Ray reserves for each client",
            float_in(0.0, 64.0))
        ray_num_cpus: int = setting(
            0, "simulation: CPUs the local Ray instance may use (0 = every core)",
            int_at_least(0))
        ray_num_gpus: int = setting(
            -1, "simulation: GPUs the local Ray instance may use (-1 = every visible GPU)",
            int_at_least(-1))
        client_gpus: str = setting(
            "", "simulation: comma list of GPU ids the clients may use, e.g. '1,2,3' (the "
            "server process keeps the run's device, e.g. cuda:0 for the foundation model); "
            "'' = every GPU", _text)
        ray_address: str = setting(
            "", "simulation: '' starts a Ray instance on this machine; 'auto' or "
            "'ray://HOST:10001' joins a running Ray cluster", _text)
        client_device: str = setting(
            "", "device of the clients' models ('' = the run's device)", _text)
        client_threads: int = setting(
            0, "torch CPU threads in each client process (0 = the run's `threads`, or 1)",
            int_at_least(0))
        superlink: str = setting(
            "127.0.0.1:8000", "deployment: the SuperLink's address (HOST:PORT of its HTTP API)",
            _address)
        insecure: bool = setting(
            False, "deployment: talk to the SuperLink without TLS (tests on loopback only)",
            boolean)
        root_certificates: str = setting(
            "", "deployment: PEM file of the CA that signed the SuperLink's certificate", _text)
        node_wait_timeout: float = setting(
            120.0, "seconds to wait until a node serves every client (else the run stops)",
            float_in(0.0, 1e9, low_open=True))
        reply_timeout: float = setting(
            3600.0, "seconds the server waits for a round's replies; a node that has not "
            "replied by then counts as a failed client (0 = wait forever)",
            float_in(0.0, 1e9))
        run_timeout: float = setting(
            0.0, "deployment: seconds to wait for the whole Flower run (0 = no limit)",
            float_in(0.0, 1e9))
        flower_logs: bool = setting(
            False, "show Flower's and Ray's INFO logs (off: warnings and errors only)", boolean)

        def __attrs_post_init__(self) -> None:
            # Chosen with --engine flower: stop before any data is loaded when flwr is missing.
            require_flower(self.mode)

    def run(self, experiment: Any) -> None:
        require_flower(self.options.mode)
        if self.options.mode == "simulation":
            from .simulation import run_simulation

            run_simulation(experiment, self.options)
        else:
            from .deployment import run_deployment

            run_deployment(experiment, self.options)

