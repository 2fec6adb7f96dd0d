"""Small models from model zoos (``--client-models tv-resnet18,timm,...``).

* client models ``tv-<name>``: every classification model of torchvision
  (torchvision's name with ``_`` written ``-``: ``tv-resnet18``,
  ``tv-mobilenet-v3-small``, ...), adapted to the input's channels, size and
  class count (:mod:`.models`, built in :mod:`.nets`);
* client model ``timm``: any timm model by name (option ``model``); timm is
  optional, without it the build says to install it.

Importing this package is light: the names come from a literal
(:mod:`.names`), torchvision and timm load in ``build``.
"""

from __future__ import annotations

import fclkit


@fclkit.hookimpl
def register_client_models(register):
    from .models import zoo_models

    for cls in zoo_models():
        register(cls)
