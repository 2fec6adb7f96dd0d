"""Trying a Flower deployment on one machine: a free loopback port, waiting until a
started SuperLink listens on it, and stopping the processes with all they started
(used by the deployment tests and ``benchmarks/flower_scaling.py``). Standard library,
and psutil where it is installed."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from typing import Any


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float) -> None:
    """Return once something listens on 127.0.0.1:``port``; RuntimeError when ``proc``
    (the process that should listen there) exits first, TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:g}s")


def stop_process_groups(procs: Iterable[subprocess.Popen], timeout: float = 10.0) -> None:
    """Stop processes started with ``start_new_session=True`` and everything they started.

    SIGTERM goes to each one's process group first (a SuperLink then stops its apps),
    SIGKILL to a group still there after ``timeout`` s. Descendants that started a
    session of their own (Flower's SuperExec starts its ``flwr-serverapp`` that way)
    are outside those groups and would outlive them: they are found before anything
    is signalled (with psutil, where installed) and stopped the same way.
    """
    procs = list(procs)
    strays: list[Any] = []
    try:
        import psutil
    except ImportError:  # the groups only
        psutil = None
    if psutil is not None:
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                strays += psutil.Process(proc.pid).children(recursive=True)
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    for stray in strays:
        with contextlib.suppress(psutil.Error):
            stray.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)
    if psutil is not None and strays:
        _, alive = psutil.wait_procs(strays, timeout=timeout)
        for stray in alive:
            with contextlib.suppress(psutil.Error):
                stray.kill()
