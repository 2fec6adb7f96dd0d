"""Built-in FCL method ``target``: TARGET (Zhang et al., "TARGET: Federated Class-Continual
Learning via Exemplar-Free Distillation", ICCV 2023).

* :mod:`.fusion` -- the fusion (FedAvg + the server's data synthesis at each task's end)
  and its client side (distillation from the previous global model on the synthetic set);
* :mod:`.synthesis` -- the generator, its model-inversion losses and the server's student.

Importing this package is light (no torch): each module is imported inside the hook.
"""

from __future__ import annotations

import fclkit


@fclkit.hookimpl
def register_fusions(register):
    from .fusion import Target

    register(Target)
