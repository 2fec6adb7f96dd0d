"""A deployment node's worker: one process per node and run that keeps the experiment.

A SuperNode runs every message in a fresh ``flwr-clientapp`` process, which exits
after its reply. Served there, every round would import torch and Avalanche, prepare
the experiment and build the client again (about 10 s a round on 2 CPU cores). So
the ClientApp in such a process only **relays**: it hands the message's content and
the node's client state to the node's worker over a Unix socket and returns the
worker's reply. The worker is an ordinary Python process started by the first
message (``python -m fclkit_builtins.flower.worker_process``); it prepares the
experiment once, keeps the client between messages (see :mod:`.client_app`) and
runs :func:`.client_app.serve_content` -- the very code a simulation's Ray actor
runs -- so the results are the same. The node's state stays where it was: in the
node's ``context.state`` (and its state folder), updated with every reply, so a
worker that is gone (stopped, idle too long, crashed) costs one preparation in a new
one, never a result.

* One worker per (node, run, experiment): the socket is
  ``$XDG_RUNTIME_DIR`` (else the temporary folder) ``/fclkit-<uid>/<digest>.sock``,
  in a folder only this user may enter; its log is beside it (``.log``).
* It exits at the end of the run (the server tells every node), when idle for
  ``fclkit-worker-idle`` seconds (``--node-config``; default 600), or when the
  SuperNode process is gone (polled every 2 s); signalling the SuperNode's process
  group stops it too. Its log (kept when not empty) holds what went wrong; with
  ``FCLKIT_DEBUG=1`` it and the relay also print how long each message took.
* ``--node-config 'fclkit-node-worker=false'`` (or ``FCLKIT_NODE_WORKER=0``) serves
  every message in its own process, as Flower does; so does a platform without Unix
  sockets. A worker that cannot be reached or fails is reported on the process's
  standard error and the message is served in the ``flwr-clientapp`` process.
* The wire format is a JSON header and raw byte blobs (Flower ``Array`` data); nothing
  is pickled.

Import-light (no torch) on the relay side: a relaying process imports flwr and this
module only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, RecordDict

from .protocol import HEADER, STATE_ARRAYS, STATE_META

#: --node-config keys
WORKER_KEY, IDLE_KEY = "fclkit-node-worker", "fclkit-worker-idle"
#: seconds a worker waits for a message before it exits
DEFAULT_IDLE = 600.0
#: seconds to wait for a new worker to listen
START_TIMEOUT = 60.0
ENV_SWITCH = "FCLKIT_NODE_WORKER"
WIRE_VERSION = 1


# =================================================================== wire format


def pack_records(records: dict[str, Any], blobs: list[bytes]) -> list[dict[str, Any]]:
    out = []
    for name, record in records.items():
        if isinstance(record, ConfigRecord):
            items = dict(record)
            for key, value in items.items():
                if isinstance(value, bytes) or (isinstance(value, list) and any(
                        isinstance(v, bytes) for v in value)):
                    raise TypeError(f"config record {name!r}: bytes value at {key!r}")
            out.append({"name": name, "kind": "config", "items": items})
        elif isinstance(record, ArrayRecord):
            arrays = []
            for key, array in record.items():
                arrays.append([key, array.dtype, list(array.shape), array.stype, len(blobs)])
                blobs.append(bytes(array.data))
            out.append({"name": name, "kind": "array", "items": arrays})
        else:
            raise TypeError(f"record {name!r} is a {type(record).__name__}")
    return out


def unpack_records(packed: list[dict[str, Any]], blobs: list[bytes]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for entry in packed:
        if entry["kind"] == "config":
            out[entry["name"]] = ConfigRecord(entry["items"])
        else:
            record = ArrayRecord()
            for key, dtype, shape, stype, index in entry["items"]:
                record[key] = Array(dtype=dtype, shape=tuple(shape), stype=stype,
                                    data=blobs[index])
            out[entry["name"]] = record
    return out


def send_frame(sock: socket.socket, header: dict[str, Any], blobs: list[bytes]) -> None:
    head = json.dumps({**header, "blobs": [len(b) for b in blobs]}).encode()
    sock.sendall(struct.pack(">Q", len(head)) + head)
    for blob in blobs:
        sock.sendall(blob)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            raise ConnectionError("the other side closed the connection")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def recv_frame(sock: socket.socket) -> tuple[dict[str, Any], list[bytes]]:
    (length,) = struct.unpack(">Q", _recv_exact(sock, 8))
    header = json.loads(_recv_exact(sock, length))
    blobs = [_recv_exact(sock, n) for n in header.pop("blobs")]
    return header, blobs


# ===================================================================== the relay


def node_state(context: Context) -> dict[str, Any]:
    return {k: context.state[k] for k in (STATE_META, STATE_ARRAYS) if k in context.state}


def wanted(content: RecordDict, context: Context) -> bool:
    """Relay this message? Only in a per-message ``flwr-clientapp`` process, for a
    deployment's message, where Unix sockets exist and nobody turned it off."""
    if not sys.argv or not os.path.basename(sys.argv[0]).startswith("flwr-clientapp"):
        return False
    if not hasattr(socket, "AF_UNIX") or os.environ.get(ENV_SWITCH, "").strip() == "0":
        return False
    if str(context.node_config.get(WORKER_KEY, "true")).strip().lower() in ("false", "0", "no"):
        return False
    header = content.get(HEADER)
    return isinstance(header, ConfigRecord) and header.get("prune") is True


def _folder() -> Path:
    base = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())
    folder = base / f"fclkit-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    info = folder.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise PermissionError(f"{folder} is not a folder only this user may use")
    return folder


def socket_path(content: RecordDict, context: Context) -> Path:
    header = content[HEADER]
    key = "\0".join([str(context.node_id), str(context.run_id), str(header.get("config")),
                     str(header.get("components")), str(header.get("client"))])
    return _folder() / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.sock"


def _parent_pid() -> int:
    """The SuperNode's process: ``flwr-clientapp --parent-pid N``, else our parent."""
    args = sys.argv
    for i, arg in enumerate(args):
        if arg == "--parent-pid" and i + 1 < len(args) and args[i + 1].isdigit():
            return int(args[i + 1])
        if arg.startswith("--parent-pid=") and arg.split("=", 1)[1].isdigit():
            return int(arg.split("=", 1)[1])
    return os.getppid()


def _connect(path: Path) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        return None
    return sock


def _start_worker(path: Path, idle: float) -> socket.socket:
    """Start the worker for ``path`` (unless another message just did) and connect."""
    import fcntl

    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one starter at a time
        sock = _connect(path)
        if sock is not None:
            return sock
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a dead worker's socket
        log = open(path.with_suffix(".log"), "ab")  # noqa: SIM115 - the worker's own
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "fclkit_builtins.flower.worker_process", str(path),
                 str(_parent_pid()), str(idle)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                close_fds=True, cwd=os.getcwd(), env={**os.environ, "PYTHONPATH": os.pathsep.join(
                    p for p in [*sys.path, os.environ.get("PYTHONPATH", "")] if p)})
        finally:
            log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            sock = _connect(path)
            if sock is not None:
                return sock
            if proc.poll() is not None:
                raise RuntimeError(f"the node's worker exited at once (exit {proc.returncode}; "
                                   f"see {path.with_suffix('.log')})")
            time.sleep(0.02)
        raise TimeoutError(f"the node's worker did not listen within {START_TIMEOUT:g}s")


def relay(content: RecordDict, context: Context, step: str) -> RecordDict | None:
    """The reply's content from the node's worker (the node's state updated from it), or
    None when the worker cannot serve it (then the caller serves the message itself)."""
    started = time.monotonic()
    try:
        idle = float(context.node_config.get(IDLE_KEY, DEFAULT_IDLE))
        path = socket_path(content, context)
        blobs: list[bytes] = []
        request = {"version": WIRE_VERSION, "step": step, "run_id": context.run_id,
                   "node_id": context.node_id, "node_config": dict(context.node_config),
                   "content": pack_records(dict(content.items()), blobs),
                   "state": pack_records(node_state(context), blobs)}
        sock = _connect(path) or _start_worker(path, idle)
        with sock:
            send_frame(sock, request, blobs)
            reply, reply_blobs = recv_frame(sock)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        records = unpack_records(reply["content"], reply_blobs)
        state = unpack_records(reply["state"], reply_blobs)
    except Exception as exc:  # noqa: BLE001 - serve it here instead; say why once
        print(f"fclkit: the node's worker could not serve this message ({type(exc).__name__}: "
              f"{exc}); serving it in this process", file=sys.stderr, flush=True)
        return None
    for key in (STATE_META, STATE_ARRAYS):
        if key in state:
            context.state[key] = state[key]
        elif key in context.state:
            del context.state[key]
    if os.environ.get("FCLKIT_DEBUG"):
        print(f"fclkit relay: {step} served by the node's worker in "
              f"{time.monotonic() - started:.2f} s; this process is {_age():.2f} s old",
              file=sys.stderr, flush=True)
    return RecordDict(records)


def _age() -> float:
    """Seconds since this process started (Linux; else nan)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def stop(content: RecordDict, context: Context) -> None:
    """Tell the node's worker for this run (if there is one) to exit."""
    if not hasattr(socket, "AF_UNIX"):
        return
    try:
        sock = _connect(socket_path(content, context))
        if sock is None:
            return
        with sock:
            send_frame(sock, {"version": WIRE_VERSION, "stop": True}, [])
            recv_frame(sock)
    except Exception:  # noqa: BLE001 - it exits when idle anyway
        pass
