"""What the user-data benchmarks share: the ``path`` option, labels, images, the stream.

Importing this module is light (numpy, torch and Pillow load when data is read).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs

from fclkit.config import int_at_least, setting
from fclkit.errors import ConfigError, FclkitError
from fclkit.interfaces import StreamSpec
from fclkit.pool import LabelledPoolBenchmark
from fclkit.stream import FederatedStream, InputSpec

#: file name endings read as images (torchvision's ImageFolder list)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

#: Pillow modes read as one channel when ``channels = 0`` (from the data)
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})


def _to_str(value: Any) -> Any:
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def a_string(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, str):
        raise ConfigError(attribute.name, value, "must be a string")


def channels_option(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or value not in (0, 1, 3):
        raise ConfigError(attribute.name, value,
                          "must be 1 (grey), 3 (RGB) or 0 (from the data: 1 when every image "
                          "is grey, else 3)")


def path_setting(what: str) -> Any:
    return setting("", f"{what} (required)", a_string, _to_str)


def channels_setting() -> Any:
    return setting(0, "channels of the images: 1 (grey), 3 (RGB) or 0 (from the data: 1 "
                   "when every image is grey, else 3)", channels_option)


def image_size_setting() -> Any:
    return setting(32, "side, in pixels, every image is resized to (square; the aspect "
                   "ratio is not kept)", int_at_least(1))


def max_length_setting() -> Any:
    return setting(128, "bytes per encoded text (UTF-8; longer texts are cut at a character "
                   "boundary)", int_at_least(8))


def domain_setting() -> Any:
    return setting("", "column naming each example's domain: with --scenario domain each "
                   "domain is one task (in sorted order, or domain_order's); ignored by "
                   "class-incremental runs", a_string, _to_str)


def domain_order_setting() -> Any:
    return setting("", "comma list of the domain values in task order, e.g. 'photo,sketch' "
                   "(domains not listed are left out); '': every domain, sorted",
                   a_string, _to_str)


def domain_ids(benchmark: str, values: Sequence[Any], order: str
               ) -> tuple[Any, tuple[str, ...]]:
    """(int64 domain id per value, -1 for a domain left out; the domains' names in task
    order) of raw domain values: sorted (numbers numerically, else as strings), or in the
    order of ``order`` (a comma list of values, compared as strings)."""
    import numpy as np

    missing = [i for i, v in enumerate(values)
               if v is None or (isinstance(v, str) and not v.strip())]
    if missing:
        raise FclkitError(f"benchmark {benchmark!r}: {len(missing)} example(s) have no domain "
                          f"(the first: example {missing[0] + 1})")
    values = [v.strip() if isinstance(v, str) else v for v in values]
    _, names, mapping = label_ids(values)
    if not order.strip():
        ids = np.fromiter((mapping[v] for v in values), dtype=np.int64, count=len(values))
        return ids, names
    wanted = [part.strip() for part in order.split(",")]
    known = {str(v): v for v in mapping}
    unknown = [w for w in wanted if w not in known]
    if unknown or len(set(wanted)) != len(wanted) or not all(wanted):
        why = (f"no domain {unknown[0]!r} in the data" if unknown
               else "lists a domain twice or an empty one")
        raise ConfigError("benchmark_options.domain_order", order,
                          f"{why}; its domains: {', '.join(names)}")
    position = {known[w]: i for i, w in enumerate(wanted)}
    ids = np.fromiter((position.get(v, -1) for v in values), dtype=np.int64, count=len(values))
    return ids, tuple(wanted)


def require_path(benchmark: str, value: str, what: str, example: str) -> Path:
    """``value`` as an existing path, else a one-line ConfigError saying what to pass."""
    if not value.strip():
        raise ConfigError("benchmark_options.path", value,
                          f"benchmark {benchmark!r} needs the option path: {what}",
                          hint=f"--benchmark-opt path={example}")
    path = Path(value).expanduser()
    if not path.exists():
        raise ConfigError("benchmark_options.path", value, f"no such file or folder ({what})",
                          hint=f"--benchmark-opt path={example}")
    return path


def label_ids(values: Sequence[Any], *, names: Sequence[str] | None = None
              ) -> tuple[Any, tuple[str, ...], dict[Any, int]]:
    """(int64 labels ``0..C-1``, class names, value -> id) of raw label values.

    Values are mapped in sorted order (numbers numerically, else as strings). With
    ``names`` (a ClassLabel's names), values are indices into it and keep its order,
    classes with no example dropped.
    """
    import numpy as np

    unhashable = next((v for v in values if isinstance(v, (list, tuple, dict, set))), None)
    if unhashable is not None:  # multi-label or structured labels: one class per example
        raise FclkitError(
            f"a label is a {type(unhashable).__name__} ({str(unhashable)[:60]}): fclkit "
            "needs one class per example (a number or a string)",
            hint="point label_column at a column with one class per example, or map this "
            "one to a single class first (e.g. datasets' Dataset.map)")
    distinct = set(values)
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in distinct):
        order = sorted(distinct)
    else:
        order = sorted(distinct, key=str)
    mapping = {v: i for i, v in enumerate(order)}
    labels = np.fromiter((mapping[v] for v in values), dtype=np.int64, count=len(values))
    shown = tuple(names[int(v)] if names is not None else str(v) for v in order)
    return labels, shown, mapping


def check_classes(benchmark: str, labels: Any, names: Sequence[str]) -> None:
    """At least two classes, each with at least two examples (one to train, one to test)."""
    import numpy as np

    counts = np.bincount(labels, minlength=len(names))
    if len(names) < 2:
        raise FclkitError(f"benchmark {benchmark!r}: the data has {len(names)} class"
                          f"{'' if len(names) == 1 else 'es'}; class-incremental tasks need "
                          "at least 2")
    small = [f"{names[c]!r} ({counts[c]})" for c in range(len(names)) if counts[c] < 2]
    if small:
        raise FclkitError(f"benchmark {benchmark!r}: every class needs at least 2 examples; "
                          f"too few in {', '.join(small[:5])}" + (" ..." if len(small) > 5
                                                                   else ""))


def images_to_tensor(images: Iterable[Any], n: int, channels: int, size: int,
                     where: Any = None) -> Any:
    """``n`` PIL images -> a ``uint8`` ``(n, C, size, size)`` tensor (0-255).

    ``C`` is ``channels``; with ``channels = 0``, 1 when every image is grey, else 3.
    Decoded in one pass and kept as bytes, a quarter of their float32 memory: every
    model reads them as float32 in ``[0, 1]``, a batch at a time
    (:func:`fclkit.stream.images_as_float`). ``where(i)`` names image ``i`` in the
    error raised for a broken one.
    """
    import numpy as np
    import torch
    from PIL import Image

    out = np.empty((n, size, size, channels or 3), dtype=np.uint8)
    mode = "L" if channels == 1 else "RGB"
    all_grey = True
    i = -1
    for i, image in enumerate(images):
        if i >= n:
            raise FclkitError(f"expected {n} images, got more")
        try:
            all_grey = all_grey and image.mode in GREY_MODES
            if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit or float grey
                arr = np.asarray(image, dtype=np.float64)
                top = float(arr.max()) if arr.size and arr.max() > 255 else 255.0
                image = Image.fromarray((arr / top * 255).clip(0, 255).astype(np.uint8))
            converted = image.convert(mode).resize((size, size), Image.Resampling.BILINEAR)
        except Exception as exc:  # truncated or broken files, not an image at all
            name = where(i) if where else f"image {i}"
            raise FclkitError(f"cannot read {name}: {exc}") from None
        out[i] = np.asarray(converted, dtype=np.uint8).reshape(out.shape[1:])
    if i + 1 != n:
        raise FclkitError(f"expected {n} images, read {i + 1}")
    if channels == 0 and all_grey:
        out = out[..., :1]
    return torch.from_numpy(np.ascontiguousarray(out)).permute(0, 3, 1, 2).contiguous()


def image_spec(channels: int, size: int) -> InputSpec:
    return InputSpec("image", (channels, size, size))


class UserDataBenchmark(LabelledPoolBenchmark):
    """A LabelledPoolBenchmark whose data may come with its own test and public splits."""

    def stream_from_splits(self, spec: StreamSpec, x: Any, y: Any, *, input_spec: InputSpec,
                           class_names: Sequence[str], x_test: Any = None,
                           y_test: Any = None, public_x: Any = None, public_y: Any = None,
                           domains: Any = None, domains_test: Any = None,
                           domain_names: Sequence[str] = ()) -> FederatedStream:
        """The stream: ``test_fraction`` held out under ``split_seed`` unless a test split is
        given (of every class in every domain, in a domain-incremental run); the server's
        public set is ``public_x`` when given (its labels kept for analysis only, like
        langid's), else ``public_fraction`` of the training data. ``domains`` (and
        ``domains_test`` with a test split) are the examples' domain ids (``-1``: left
        out), used when the run's scenario is ``domain``."""
        import numpy as np
        import torch

        from fclkit.partition import federated_stream, split_public
        from fclkit.stream import PublicSet

        y = np.asarray(y, dtype=np.int64)
        use_domains = spec.scenario == "domain" and domains is not None
        d = d_test = None
        if use_domains:
            d = np.asarray(domains, dtype=np.int64)
            keep = np.flatnonzero(d >= 0)
            if len(keep) < len(d):
                x, y, d = x[keep], y[keep], d[keep]
            if x_test is not None:
                if domains_test is None:
                    raise ConfigError("benchmark_options.domain_column", "",
                                      "the test split has no domain column",
                                      hint="test_split='' holds out test_fraction of "
                                      "train_split instead")
                d_test = np.asarray(domains_test, dtype=np.int64)
                keep = np.flatnonzero(d_test >= 0)
                y_test = np.asarray(y_test, dtype=np.int64)
                if len(keep) < len(d_test):
                    x_test, y_test, d_test = x_test[keep], y_test[keep], d_test[keep]
        if use_domains:
            present = set(y.tolist()) | (set(np.asarray(y_test).tolist())
                                         if y_test is not None else set())
            missing = [c for c in range(len(class_names)) if c not in present]
            if missing:
                raise ConfigError("benchmark_options.domain_order", ",".join(domain_names),
                                  "the domains kept hold no example of class "
                                  + ", ".join(repr(str(class_names[c])) for c in missing[:5]),
                                  hint="keep more domains")
        if x_test is None:
            strata = y if d is None else d * (int(y.max()) + 1 if len(y) else 1) + y
            train, test = split_public(strata, self.options.test_fraction,
                                       np.random.default_rng(self.options.split_seed))
            x, x_test, y, y_test = x[train], x[test], y[train], y[test]
            if d is not None:
                d, d_test = d[train], d[test]
        stream = federated_stream(x, y, x_test, np.asarray(y_test, dtype=np.int64),
                                  spec, input_spec=input_spec, public=public_x,
                                  class_names=tuple(class_names),
                                  domains=None if d is None else (d, d_test),
                                  domain_names=tuple(domain_names))
        if public_x is not None and public_y is not None and stream.public is not None:
            stream = attrs.evolve(stream, public=PublicSet(
                x=stream.public.x, y=torch.as_tensor(np.asarray(public_y, dtype=np.int64))))
        return stream
