"""Built-in FCL method ``pilora``: PILoRA, Prototype Guided Incremental LoRA for
Federated Class-Incremental Learning (Guo et al., ECCV 2024; docs/methods/pilora.md).

* :mod:`.fusion` -- the fusion (server side: LoRA averaging, prototype re-weighting) and
  the FM options it needs;
* :mod:`.client` -- its client side (incremental LoRA + prototype training);
* :mod:`.lora` -- one LoRA block per task on top of peft's LoRA layers;
* :mod:`.prototypes` -- the distance-based classifier, its losses, the re-weighting.

Importing this package is light (no torch): the modules are imported inside the hook.
"""

from __future__ import annotations

import fclkit


@fclkit.hookimpl
def register_fusions(register):
    from .fusion import PILoRA

    register(PILoRA)
