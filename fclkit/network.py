"""Is the network there? Asked quickly, so offline machines fail at once, never hang."""

from __future__ import annotations

import socket
import threading
from urllib.parse import urlparse


def reachable(url: str, timeout: float) -> bool:
    """Whether a TCP connection to ``url``'s host opens within ``timeout`` seconds.

    Runs in a daemon thread so that even a stuck name resolution cannot hold the
    caller longer than ``timeout`` (+ half a second).
    """
    parsed = urlparse(url)
    host = parsed.hostname
    if not host:
        return False
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True, name="fclkit-network-probe")
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])
