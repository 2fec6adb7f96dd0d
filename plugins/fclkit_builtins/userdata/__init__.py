"""Built-in userdata plugin: benchmarks over your own data.

* ``imagefolder`` -- a folder per class of image files (torchvision's ImageFolder
  layout), read with Pillow (:mod:`fclkit_builtins.userdata.imagefolder`);
* ``text-file`` -- a CSV or JSONL file with a text column and a label column,
  encoded as UTF-8 bytes (:mod:`fclkit_builtins.userdata.textfile`);
* ``hf-dataset`` -- a Hugging Face ``datasets`` data set: a folder saved with
  ``save_to_disk``, local files through a builder, or a hub id
  (:mod:`fclkit_builtins.userdata.hf_dataset`; needs ``fclkit[datasets]``).

Each is cut into a federated class-incremental stream by the same code as every
built-in benchmark (:mod:`fclkit.partition`). See ``docs/your-data.md``.

Importing this package is light (no torch, no Pillow, no datasets).
"""

from __future__ import annotations

import fclkit


@fclkit.hookimpl
def register_benchmarks(register):
    from .hf_dataset import HFDatasetBenchmark
    from .imagefolder import ImageFolderBenchmark
    from .textfile import TextFileBenchmark

    register(ImageFolderBenchmark)
    register(TextFileBenchmark)
    register(HFDatasetBenchmark)
