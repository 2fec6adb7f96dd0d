"""Configuration fields: ``setting`` (an attrs field with a help text) and the validators
and converters that fclkit's configuration and every plugin's ``Options`` use.

A validator raises :class:`fclkit.errors.ConfigError` naming the field, the value
and what is allowed, so a bad value stops a run with one clear line.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import attrs

from .errors import ConfigError


def setting(default: Any, help: str, validator: Any = None, converter: Any = None) -> Any:
    """An attrs field with a help text (and optional validator/converter)."""
    kwargs: dict[str, Any] = {"metadata": {"help": help}}
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        kwargs["default"] = default
    else:
        kwargs["default"] = default
    if validator is not None:
        kwargs["validator"] = validator
    if converter is not None:
        kwargs["converter"] = converter
    return attrs.field(**kwargs)


# ------------------------------------------------------------------ validators


def int_at_least(minimum: int):
    def check(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(attribute.name, value, f"must be an integer >= {minimum}")
        if value < minimum:
            raise ConfigError(attribute.name, value, f"must be an integer >= {minimum}")

    return check


def positive_float(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(attribute.name, value, "must be a finite number > 0")
    if value <= 0:
        raise ConfigError(attribute.name, value, "must be a finite number > 0")


def non_negative(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or value < 0):
        raise ConfigError(attribute.name, value, "must be a finite number >= 0")


def float_in(low: float, high: float, *, low_open: bool = False, high_open: bool = False):
    def check(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        allowed = f"must be a number in {lo}{low}, {high}{hi}"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise ConfigError(attribute.name, value, allowed)
        if value < low or value > high or (low_open and value == low) or (
            high_open and value == high
        ):
            raise ConfigError(attribute.name, value, allowed)

    return check


def one_of(*choices: str):
    def check(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value not in choices:
            raise ConfigError(attribute.name, value, "must be one of: " + ", ".join(choices))

    return check


def component_name(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(attribute.name, value, "must be a non-empty component name")


def component_names(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, tuple) or not value:
        raise ConfigError(
            attribute.name, value, "must be one name or a comma-separated list of names"
        )
    for position, name in enumerate(value, 1):
        if not isinstance(name, str):
            raise ConfigError(attribute.name, value,
                              f"name {position} is {type(name).__name__} {name!r}, not a name")
    for position, name in enumerate(value, 1):
        if not name.strip():
            shown = ",".join(value) if len(value) > 1 else name
            where = (f"name {position} of {len(value)} is empty" if len(value) > 1
                     else "must be a non-empty name")
            raise ConfigError(attribute.name, shown, where,
                              hint="remove the extra comma" if len(value) > 1 else None)


def options_table(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, Mapping) or any(not isinstance(k, str) for k in value):
        raise ConfigError(attribute.name, value, "must be a table of option = value")


def boolean(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(attribute.name, value, "must be true or false")


def torch_device(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, str) or not (
        value in ("cpu", "cuda", "mps") or value.startswith("cuda:")
    ):
        raise ConfigError(attribute.name, value, "must be 'cpu', 'cuda', 'cuda:N' or 'mps'")


def to_names(value: Any) -> tuple[str, ...]:
    """``"mlp, cnn"`` -> ``("mlp", "cnn")``; an empty name (``"mlp,,cnn"``, a comma at an
    end) is kept, for the validator to refuse it by its position."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(","))
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return value  # validator reports it


def to_architectures(value: Any) -> Any:
    """``"mlp,cnn"`` / a list -> names assigned in turn; ``"0=mlp,1=cnn,default=lenet"``
    / a table -> architecture per client id (``default``: every client not listed)."""
    if isinstance(value, str) and "=" in value:
        parts = [part.strip() for part in value.split(",")]
        if not all(parts):  # an empty entry: the validator names its position
            return tuple(parts)
        pairs = [part.partition("=") for part in parts]
        return {k.strip(): v.strip() for k, _, v in pairs}
    if isinstance(value, Mapping):
        return {str(k).strip(): v for k, v in value.items()}
    return to_names(value)


def architectures(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, tuple):
        component_names(inst, attribute, value)
        return
    shape = ("must be a name, a comma list of names assigned to clients in turn, or a table "
             "client id -> name, e.g. {0 = \"mlp\", 1 = \"cnn\", default = \"lenet\"}")
    if not isinstance(value, dict) or not value:
        raise ConfigError(attribute.name, value, shape)
    for key, name in value.items():
        if key != "default" and not key.isdigit():
            raise ConfigError(f"{attribute.name}.{key}", name,
                              "keys are client ids (0, 1, ...) or 'default'")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{attribute.name}.{key}", name, "must be an architecture name")


def assign_architectures(client_models: tuple | Mapping[str, str], clients: int,
                         ) -> dict[int, str]:
    """Client id -> small-model architecture, from ``client_models`` (see its help)."""
    if not isinstance(client_models, Mapping):
        return {k: client_models[k % len(client_models)] for k in range(clients)}
    extra = sorted(int(k) for k in client_models if k != "default" and int(k) >= clients)
    if extra:
        raise ConfigError(f"client_models.{extra[0]}", client_models[str(extra[0])],
                          f"there is no client {extra[0]}: clients = {clients} "
                          f"(ids 0..{clients - 1})", hint="remove it or raise clients")
    default = client_models.get("default")
    missing = [k for k in range(clients) if str(k) not in client_models]
    if missing and default is None:
        raise ConfigError("client_models", dict(client_models),
                          f"no architecture for client(s) {missing}",
                          hint='list every client or add default = "NAME"')
    return {k: client_models[str(k)] if str(k) in client_models else str(default)
            for k in range(clients)}


def to_ints(value: Any) -> Any:
    """``"1,1,3"`` / ``[1, 1, 3]`` -> ``(1, 1, 3)``; ``""`` -> ``()``; an entry that is not a
    whole number is kept, for the validator to name it."""
    if isinstance(value, str):
        parts = [part.strip() for part in value.split(",")] if value.strip() else []
        return tuple(int(p) if p.lstrip("+-").isdigit() else p for p in parts)
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return value  # validator reports it


def join_tasks_list(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, tuple):
        raise ConfigError(attribute.name, value,
                          "must be a comma list of task numbers, one per client, e.g. 1,1,3")
    for position, task in enumerate(value):
        if isinstance(task, bool) or not isinstance(task, int) or task < 1:
            raise ConfigError(attribute.name, ",".join(map(str, value)),
                              f"entry {position + 1} (client {position}) is {task!r}: every "
                              "entry must be a task number >= 1")


def to_dict(value: Any) -> Any:
    return dict(value) if isinstance(value, Mapping) else value
