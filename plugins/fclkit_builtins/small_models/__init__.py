"""Built-in small-model architectures for clients (``--client-models``).

* client models ``mlp`` and ``cnn`` (:mod:`.models`).

Importing this package is light (no torch).
"""

from __future__ import annotations

import fclkit


@fclkit.hookimpl
def register_client_models(register):
    from .models import MLP, SmallCNN

    register(MLP)
    register(SmallCNN)
