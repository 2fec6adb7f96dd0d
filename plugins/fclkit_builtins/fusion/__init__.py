"""Built-in fusions that need no foundation model: ``fedavg`` and ``isolated``.

* fusion ``fedavg`` -- weighted mean, or robust median / trimmed mean (:mod:`.fedavg`);
* fusion ``isolated`` -- no fusion, the local-only baseline (:mod:`.isolated`).

Importing this package is light (no torch).
"""

from __future__ import annotations

import fclkit


@fclkit.hookimpl
def register_fusions(register):
    from .fedavg import FedAvg
    from .isolated import Isolated

    register(FedAvg)
    register(Isolated)
