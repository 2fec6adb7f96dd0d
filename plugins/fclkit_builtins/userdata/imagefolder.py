"""Benchmark ``imagefolder``: your images, a folder per class (torchvision's ImageFolder layout).

::

    path/
      cat/  001.png  002.jpg ...
      dog/  a.jpeg ...

Every sub-folder of ``path`` is a class, named after the folder (classes in
sorted order of their names; folders whose name starts with ``.`` are skipped);
the image files in it and below it (:data:`~fclkit_builtins.userdata.common.IMAGE_EXTENSIONS`)
are its examples. Images are read with Pillow, converted to ``channels`` (1 or
3; by default from the data), resized to ``image_size`` x ``image_size`` and
kept as ``uint8`` (models read them as float32 in ``[0, 1]``). The shared split
and stream are :class:`fclkit.pool.LabelledPoolBenchmark`'s.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from fclkit.config import int_at_least, setting
from fclkit.errors import ConfigError, FclkitError
from fclkit.pool import LabelledPool, PoolOptions

from .common import (
    IMAGE_EXTENSIONS,
    UserDataBenchmark,
    channels_setting,
    check_classes,
    image_size_setting,
    image_spec,
    images_to_tensor,
    path_setting,
    require_path,
)


def image_files(folder: Path) -> list[Path]:
    """The image files in ``folder`` and below it, in sorted order (hidden ones skipped)."""
    return sorted(p for p in folder.rglob("*")
                  if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


class ImageFolderBenchmark(UserDataBenchmark):
    name = "imagefolder"
    description = ("your images, a folder per class (path/CLASS/*.png|jpg...), read with "
                   "Pillow; offline")
    default_foundation_model = "efficientnet-lite"
    default_client_model = "cnn"

    @attrs.frozen
    class Options(PoolOptions):
        path: str = path_setting("folder holding one sub-folder of images per class")
        channels: int = channels_setting()
        image_size: int = image_size_setting()
        max_per_class: int = setting(0, "images kept per class, the first in sorted file "
                                     "order (0: all)", int_at_least(0))

    def load_pool(self) -> LabelledPool:
        import numpy as np

        o = self.options
        root = require_path(self.name, o.path, "a folder with one sub-folder of images per "
                            "class", "DIR")
        if not root.is_dir():
            raise ConfigError("benchmark_options.path", o.path,
                              "must be a folder with one sub-folder of images per class, "
                              "not a file", hint="for a CSV or JSONL file use --benchmark "
                              "text-file; for other files --benchmark hf-dataset")
        classes = sorted(p.name for p in root.iterdir()
                         if p.is_dir() and not p.name.startswith("."))
        if not classes:
            raise FclkitError(f"benchmark 'imagefolder': {root} has no class sub-folders "
                              "(expected path/CLASS/image.png ...)")
        files: list[Path] = []
        labels: list[int] = []
        empty = []
        for c, name in enumerate(classes):
            found = image_files(root / name)
            if o.max_per_class:
                found = found[:o.max_per_class]
            if not found:
                empty.append(name)
            files += found
            labels += [c] * len(found)
        if empty:
            raise FclkitError(
                f"benchmark 'imagefolder': no image file in the class folder(s) "
                f"{', '.join(repr(e) for e in empty[:5])} of {root} (read: "
                f"{' '.join(IMAGE_EXTENSIONS)})", hint="remove the empty folders or add images")
        y = np.asarray(labels, dtype=np.int64)
        check_classes(self.name, y, classes)
        x = images_to_tensor(self._open_all(files), len(files), o.channels, o.image_size,
                             where=lambda i: str(files[i]))
        return LabelledPool(x, y, image_spec(int(x.shape[1]), o.image_size),
                            class_names=tuple(classes))

    @staticmethod
    def _open_all(files: list[Path]):
        from PIL import Image

        for f in files:
            try:
                with Image.open(f) as image:
                    image.load()
                    yield image
            except OSError as exc:
                raise FclkitError(f"benchmark 'imagefolder': cannot read {f}: {exc}") from None
