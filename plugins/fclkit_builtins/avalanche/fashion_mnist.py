"""Fashion-MNIST from local idx files: where to look, how to read them, how to cut them.

Used by the ``split-fmnist`` benchmark (:class:`fclkit_builtins.avalanche.benchmarks.SplitFMNIST`).
The four files are the original idx files (``train-images-idx3-ubyte``,
``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``),
gzipped (``.gz``, as Debian's ``dataset-fashion-mnist`` ships them in
:data:`DEBIAN_FOLDER`) or not (as torchvision leaves them in ``<root>/FashionMNIST/raw``).
They are read with numpy as ``uint8``; numpy loads on the first read, torch never.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

#: where Debian's (and Ubuntu's) package ``dataset-fashion-mnist`` installs the files
DEBIAN_FOLDER = Path("/usr/share/datasets/fashion-mnist")
#: how to get the files without internet, quoted in the error message
INSTALL_HINT = "apt-get install dataset-fashion-mnist"

#: (split, kind) -> file stem
FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}

CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot")


def _file(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        path = folder / name
        if path.is_file():
            return path
    return None


def find_folder(candidates: Iterable[Path]) -> Path | None:
    """The first folder holding all four files (plain or ``.gz``); a candidate also
    counts through its ``raw/`` and ``FashionMNIST/raw/`` sub-folders."""
    for base in candidates:
        for folder in (base, base / "raw", base / "FashionMNIST" / "raw"):
            if all(_file(folder, stem) is not None for stem in FILES.values()):
                return folder
    return None


def read_idx(path: Path) -> np.ndarray:
    """An idx file (gzipped or not) of unsigned bytes as a read-only ``uint8`` array."""
    import numpy as np

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an idx file of unsigned bytes")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    count = int(np.prod(shape)) if shape else 0
    if len(data) - header != count:
        raise ValueError(f"{path}: the header announces {shape} ({count} bytes) but "
                         f"{len(data) - header} bytes follow")
    array = np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)
    return array


def read_folder(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train": (images, labels), "test": (images, labels)}``; images ``(n, 28, 28)`` uint8."""
    out = {}
    for split in ("train", "test"):
        images = read_idx(_file(folder, FILES[(split, "images")]) or Path("missing"))
        labels = read_idx(_file(folder, FILES[(split, "labels")]) or Path("missing"))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"{folder}: {split} images {images.shape} do not match "
                             f"labels {labels.shape}")
        out[split] = (images, labels)
    return out


def cap_per_class(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Indices keeping at most ``per_class`` examples of every class (drawn with ``rng``;
    all of them for ``per_class = 0``), in ascending order."""
    import numpy as np

    if per_class <= 0:
        return np.arange(len(labels))
    kept = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) > per_class:
            idx = np.sort(rng.choice(idx, per_class, replace=False))
        kept.append(idx)
    return np.sort(np.concatenate(kept)) if kept else np.zeros(0, dtype=np.int64)
