"""Built-in foundation model ``hf``: Hugging Face transformers backbones (text and vision).

* :mod:`fclkit_builtins.hf.hf` -- the ``hf`` foundation model (default: the packaged
  all-MiniLM-L6-v2, offline);
* :mod:`fclkit.foundation` -- :class:`FrozenBackboneFoundationModel`, the frozen
  backbone + head (+ LoRA) + feature cache shared by fclkit's foundation models;
* :mod:`fclkit.feature_cache` -- the content-addressed feature cache;
* :mod:`fclkit_builtins.hf.hub` -- resolving a model id without hanging offline.

Importing this package is light: torch, transformers and peft load in ``setup``.
"""

from __future__ import annotations

import fclkit


@fclkit.hookimpl
def register_foundation_models(register):
    from .hf import HuggingFaceFM

    register(HuggingFaceFM)
