"""Built-in baselines for the comparison with the method (docs/baselines.md).

* fusion ``fedprox`` -- FedAvg + the clients' proximal term (Li et al., MLSys 2020;
  :mod:`.fedprox`);
* fusion ``feddf`` -- ensemble distillation of every upload at once into each
  architecture's small model and the FM part (Lin et al., NeurIPS 2020; :mod:`.feddf`);
* fusion ``fm-fedavg`` -- the clients train the FM's part on their own data with an
  exemplar memory, the server averages the parts (:mod:`.fm_fedavg`).

Importing this package is light (no torch): each module is imported inside the hook.
"""

from __future__ import annotations

import fclkit


@fclkit.hookimpl
def register_fusions(register):
    from .feddf import FedDF
    from .fedprox import FedProx
    from .fm_fedavg import FMFedAvg

    register(FedProx)
    register(FedDF)
    register(FMFedAvg)
