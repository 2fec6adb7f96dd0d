"""Built-in FCL method ``glfc``: GLFC, Global-Local Forgetting Compensation (Dong et al.,
"Federated Class-Incremental Learning", CVPR 2022; docs/methods/glfc.md).

* fusion ``glfc`` -- FedAvg + a proxy server that picks the old global model from
  prototype gradients (:mod:`.fusion`, :mod:`.proxy`); its client side replaces the
  strategy's cross-entropy with the gradient-compensated loss plus the relation
  distillation from that old model (:mod:`.client`, :mod:`.losses`).

Importing this package is light (no torch): each module is imported inside the hook.
"""

from __future__ import annotations

import fclkit


@fclkit.hookimpl
def register_fusions(register):
    from .fusion import GLFC

    register(GLFC)
