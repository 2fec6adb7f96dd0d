"""Built-in federated method ``one-by-one`` (One-by-One Distillation, our reading of the
paper) and the baseline ``fm-only`` (the foundation model without private data).

* :mod:`.fusion` -- the server side: small models distilled one at a time into a
  personalised FM part per client;
* :mod:`.guidance` -- the client side: the FM guides each small model;
* :mod:`.fm_only` -- the baseline;
* :mod:`.batched` -- the fusion's K+1 FM parts distilled as one batched computation;
* :mod:`.distillation` -- the knowledge-distillation loss they use.
"""

import fclkit


@fclkit.hookimpl
def register_fusions(register):
    from .fm_only import PublicDataFM
    from .fusion import OneByOneDistillation

    register(OneByOneDistillation)
    register(PublicDataFM)
