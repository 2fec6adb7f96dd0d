"""Built-in text plugin: the ``langid`` benchmark and small byte-level text models.

* benchmark ``langid`` -- class-incremental language identification generated
  offline with Faker (:mod:`fclkit_builtins.text.langid`);
* benchmark ``langid-real`` -- the same on real sentences of the package
  chatterbot-corpus (:mod:`fclkit_builtins.text.chatterbot`);
* client models ``text-bow``, ``text-cnn``, ``text-gru`` (:mod:`fclkit_builtins.text.models`);
* the ``utf8-bytes`` text encoding shared by text benchmarks and foundation
  models (:mod:`fclkit.text`).

Importing this package is light (no torch, no faker, no corpus).
"""

from __future__ import annotations

import fclkit


@fclkit.hookimpl
def register_benchmarks(register):
    from .chatterbot import RealLangIDBenchmark
    from .langid import LangIDBenchmark

    register(LangIDBenchmark)
    register(RealLangIDBenchmark)


@fclkit.hookimpl
def register_client_models(register):
    from .models import TEXT_MODELS

    for cls in TEXT_MODELS:
        register(cls)
