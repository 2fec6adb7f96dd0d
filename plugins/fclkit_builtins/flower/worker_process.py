"""The process of a deployment node's worker (see :mod:`.node_worker`).

``python -m fclkit_builtins.flower.worker_process SOCKET PARENT_PID IDLE_SECONDS``
listens on the Unix socket and serves one relayed message at a time with
:func:`.client_app.serve_content` -- the code a simulation's Ray actor runs --
keeping the experiment and the client between messages, until it is told to stop,
has been idle for ``IDLE_SECONDS`` or its SuperNode (``PARENT_PID``) is gone.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path

from flwr.app import Context, RecordDict

from .client_app import serve_content
from .node_worker import (
    WIRE_VERSION,
    node_state,
    pack_records,
    recv_frame,
    send_frame,
    unpack_records,
)


def _handle(conn: socket.socket) -> bool:
    """Serve one request; False when asked to stop."""
    request, blobs = recv_frame(conn)
    if request.get("stop") is True:
        send_frame(conn, {"stopped": True}, [])
        return False
    try:
        if request.get("version") != WIRE_VERSION:
            raise ValueError(f"wire version {request.get('version')!r}, expected "
                             f"{WIRE_VERSION}")
        content = RecordDict(unpack_records(request["content"], blobs))
        context = Context(run_id=int(request["run_id"]), node_id=int(request["node_id"]),
                          node_config=dict(request["node_config"]),
                          state=RecordDict(unpack_records(request["state"], blobs)),
                          run_config={})
        started = time.monotonic()
        reply = serve_content(content, context, str(request["step"]))
        if os.environ.get("FCLKIT_DEBUG"):
            print(f"{time.strftime('%H:%M:%S')} served {request['step']} in "
                  f"{time.monotonic() - started:.2f} s", flush=True)
        out: list[bytes] = []
        header = {"content": pack_records(dict(reply.items()), out),
                  "state": pack_records(node_state(context), out)}
    except Exception as exc:  # noqa: BLE001 - the relay serves it itself
        header, out = {"error": f"{type(exc).__name__}: {exc}"}, []
    send_frame(conn, header, out)
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def serve(path: Path, parent: int, idle: float) -> None:
    """Listen on ``path`` and serve one connection at a time until idle or orphaned."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    server.bind(str(path))
    os.chmod(path, 0o600)
    server.listen(16)
    server.settimeout(2.0)
    last = time.monotonic()
    try:
        while True:
            try:
                conn, _ = server.accept()
            except TimeoutError:
                if not _alive(parent) or time.monotonic() - last > idle:
                    return
                continue
            with conn:
                conn.settimeout(None)
                try:
                    if not _handle(conn):
                        return
                except (OSError, ValueError) as exc:  # a relay that went away mid-message
                    print(f"fclkit node worker: {type(exc).__name__}: {exc}", flush=True)
            last = time.monotonic()
    finally:
        server.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        with contextlib.suppress(OSError):
            path.with_suffix(".lock").unlink()
        log = path.with_suffix(".log")
        with contextlib.suppress(OSError):
            if log.stat().st_size == 0:
                log.unlink()


def main(argv: list[str] | None = None) -> None:
    import signal
    import sys

    # stopped with its SuperNode's process group: leave no socket behind
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        raise SystemExit("usage: python -m fclkit_builtins.flower.worker_process SOCKET "
                         "PARENT_PID IDLE_SECONDS")
    serve(Path(args[0]), int(args[1]), float(args[2]))


if __name__ == "__main__":
    main()
