"""Import the heavy modules a run's clients need while the run loads its data.

Building a client imports what its strategy is made of -- for the built-in
strategies Avalanche, torchvision and ``torch._dynamo`` (which ``torch.optim``
and torchvision import), about 1.7 s of a default run's start-up. None of it
depends on the data, so :class:`BackgroundImports` imports these modules in a
thread while the main thread loads the benchmark and the foundation model and
computes the FM's features of the clients' test sets (torch releases the GIL in
its kernels, so on two cores the two overlap). Both threads run Python most of
the time, though -- a small image model's forward pass is many short kernels --
so while the thread runs, the interpreter's switch interval is lowered from 5 ms
to 0.1 ms (:func:`sys.setswitchinterval`): the main thread then gets the GIL back
soon after each kernel instead of waiting out the importer's 5 ms. On the
default run this takes the pair from 3.1 s one after the other to about 2.4 s
(``benchmarks/startup.py``). The main thread waits for the thread
(:meth:`BackgroundImports.wait`) before it builds the first client.

A component lists its modules in ``background_imports`` (a class attribute of
:class:`fclkit.interfaces.Component`). An import that fails in the thread is
ignored there: the component's own import raises the error where it belongs.
``FCLKIT_BACKGROUND_IMPORTS=0`` imports nothing in the background.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
from collections.abc import Iterable

#: set to 0 to import nothing in the background
ENV_SWITCH = "FCLKIT_BACKGROUND_IMPORTS"
#: the interpreter's switch interval while the thread runs (seconds; CPython's is 0.005)
SWITCH_INTERVAL = 1e-4


class BackgroundImports:
    """Imports ``modules`` in a daemon thread, in order, from construction on."""

    def __init__(self, modules: Iterable[str]) -> None:
        names = list(dict.fromkeys(modules))  # in order, once each
        self.modules = names
        self._thread: threading.Thread | None = None
        self._interval = sys.getswitchinterval()
        if names and os.environ.get(ENV_SWITCH, "1") != "0":
            self._thread = threading.Thread(target=self._run, name="fclkit-imports",
                                            daemon=True)
            sys.setswitchinterval(min(self._interval, SWITCH_INTERVAL))
            self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        try:
            for name in self.modules:
                try:
                    importlib.import_module(name)
                except Exception:  # noqa: BLE001 - the component's own import reports it
                    pass
        finally:
            sys.setswitchinterval(self._interval)

    def wait(self) -> None:
        """Return once every module is imported (or has failed to)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
