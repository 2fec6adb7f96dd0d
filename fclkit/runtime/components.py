"""Resolving a configuration into components: every name to its registered class, every
options table to the component's built ``Options``, and the checks that they fit together.

Generic over the component kinds (:data:`fclkit.kinds.KINDS`): a kind that selects
one component (``cl``, ``fusion``, ...) gets its options from its table; a kind
that selects several (``client_models``, ``loggers``) splits its table, flat keys
going to every selected component that has them and ``[table.NAME]`` sub-tables
to one. Two fields take ``auto``, resolved first from the other components:
``fm`` (the benchmark's default FM when the fusion needs one) and
``client_models`` (the benchmark's default small model).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from .. import kinds
from ..config import DEPRECATED_FIELDS, ExperimentConfig, build_options
from ..errors import ConfigError, IncompatibleComponentsError
from ..plugins import Registered, Registry

AUTO = "auto"


@attrs.frozen
class Selected:
    """A component a run uses: its registry entry and its built options."""

    entry: Registered
    options: Any

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def cls(self) -> Any:
        return self.entry.cls


@attrs.frozen
class Components:
    """Every component of a run, by kind (in :data:`~fclkit.kinds.KINDS` order) and name."""

    by_kind: Mapping[str, Mapping[str, Selected]]

    def one(self, kind: str) -> Selected:
        """The component of a kind that selects exactly one (strategy, fusion, ...)."""
        (selected,) = self.by_kind[kind].values()
        return selected

    def optional(self, kind: str) -> Selected | None:
        """The component of an optional kind, or None (``fm = "none"``)."""
        selected = list(self.by_kind[kind].values())
        return selected[0] if selected else None

    def named(self, kind: str) -> Mapping[str, Selected]:
        """Name -> component, for a kind that selects several (client models, loggers)."""
        return self.by_kind[kind]

    def all(self) -> list[Selected]:
        return [s for selected in self.by_kind.values() for s in selected.values()]

    def records(self) -> list[dict[str, Any]]:
        """What ``run.json`` records of each component: name, provenance and every option's
        value (defaults included, so a plugin default that changes later still shows)."""
        from ..results import component_record

        return [component_record(s.entry, s.options) for s in self.all()]

    def refs(self) -> list[dict[str, str]]:
        """Where each component lives, so a process that starts from nothing can import it."""
        return [{"kind": s.entry.kind, "name": s.name, "module": s.cls.__module__,
                 "qualname": s.cls.__qualname__} for s in self.all()]


# ------------------------------------------------------------------- auto values


def resolve_auto(config: ExperimentConfig, registry: Registry) -> ExperimentConfig:
    """``config`` with ``fm = "auto"`` and every ``auto`` small model replaced."""
    fusion = registry.get("fusion", config.fusion).cls
    benchmark = registry.get("benchmark", config.benchmark).cls
    return config.evolve(fm=_auto_fm(config, fusion, benchmark, registry),
                         client_models=_auto_models(config, benchmark, registry))


def _auto_fm(config: ExperimentConfig, fusion: Any, benchmark: Any, registry: Registry) -> str:
    if config.fm != AUTO:
        return config.fm
    if not fusion.requires_foundation_model:
        return kinds.NONE
    default = benchmark.default_foundation_model
    if default is None:
        raise IncompatibleComponentsError(
            f"fusion {config.fusion!r} needs a foundation model and benchmark "
            f"{config.benchmark!r} names no default one",
            hint="pass --fm NAME; available: "
            + (", ".join(registry.names("foundation_model")) or "none installed"))
    return default


def _auto_models(config: ExperimentConfig, benchmark: Any, registry: Registry) -> tuple | dict:
    names = (config.client_models.values() if isinstance(config.client_models, Mapping)
             else config.client_models)
    if AUTO not in names:
        return config.client_models
    default = benchmark.default_client_model
    if default is None:
        raise IncompatibleComponentsError(
            f"benchmark {config.benchmark!r} names no default small model",
            hint="pass --client-models NAME; available: "
            + (", ".join(registry.names("client_model")) or "none installed"))
    if isinstance(config.client_models, Mapping):
        return {k: default if v == AUTO else v for k, v in config.client_models.items()}
    return tuple(default if v == AUTO else v for v in config.client_models)


# ----------------------------------------------------------------------- options


def _known_options(cls: Any) -> set[str]:
    return {a.name for a in attrs.fields(cls.Options)} if attrs.has(cls.Options) else set()


def _single_options(kind: kinds.ComponentKind, entry: Registered, table: Mapping[str, Any],
                    warn: Any) -> Any:
    values = dict(table)
    # a deprecated top-level field moved here by the config: harmless where the component
    # has no such option (the old field had no effect there either)
    for moved_to, key in DEPRECATED_FIELDS.values():
        if moved_to == kind.options_field and key in values and key not in _known_options(
                entry.cls):
            warn(f"{kind.options_field}.{key} is ignored: {kind.label} {entry.name!r} has "
                 "no such option")
            del values[key]
    return build_options(entry.cls.Options, values, component=f"{kind.label} {entry.name!r}",
                         table=kind.options_field)


def _several_options(kind: kinds.ComponentKind, entries: Mapping[str, Registered],
                     table: Mapping[str, Any]) -> dict[str, Any]:
    per_name: dict[str, dict[str, Any]] = {name: {} for name in entries}
    for key, value in table.items():
        if key in entries and isinstance(value, Mapping):
            per_name[key].update(value)
            continue
        takers = [n for n, e in entries.items() if key in _known_options(e.cls)]
        if not takers:
            raise ConfigError(
                f"{kind.options_field}.{key}", value,
                f"no selected {kind.label} (" + (", ".join(entries) or "none selected")
                + ") has this option", hint="`fclkit plugins --options` lists options")
        for n in takers:
            per_name[n][key] = value
    return {n: build_options(e.cls.Options, per_name[n], component=f"{kind.label} {n!r}",
                             table=kind.options_field)
            for n, e in entries.items()}


def resolve(config: ExperimentConfig, registry: Registry, warn: Any = None
            ) -> tuple[ExperimentConfig, Components]:
    """(``config`` with its ``auto`` values resolved, every component it selects).

    Unknown names list what is installed; unknown options name the table and the
    component; ``warn(message)`` receives what is only worth a warning.
    """
    warn = warn or (lambda message: None)
    config = resolve_auto(config, registry)
    by_kind: dict[str, dict[str, Selected]] = {}
    for kind in kinds.KINDS:
        value = getattr(config, kind.field)
        entries = {n: registry.get(kind.name, n) for n in kind.names(value, registry)}
        table = getattr(config, kind.options_field)
        if kind.name == "foundation_model" and entries:  # what the method needs, under
            fusion = registry.get("fusion", config.fusion).cls  # the user's own options
            (fm,) = entries.values()
            table = {**fusion.foundation_model_options(config, fm.cls), **table}
        if kind.several:
            options = _several_options(kind, entries, table)
        else:
            options = {n: _single_options(kind, e, table, warn) for n, e in entries.items()}
        by_kind[kind.name] = {n: Selected(e, options[n]) for n, e in entries.items()}
    return config, Components(by_kind)


def check_compatibility(config: ExperimentConfig, components: Components,
                        architectures: Mapping[int, str], registry: Registry) -> None:
    """Stop with one line when the fusion cannot work with the selected models."""
    fusion = components.one("fusion").cls
    archs = sorted(set(architectures.values()))
    if fusion.requires_homogeneous_models and len(archs) > 1:
        hetero = [n for n, e in registry.components["fusion"].items()
                  if e.cls.fuses_heterogeneous_models]
        suggestion = ("use --fusion " + " or --fusion ".join(sorted(hetero))
                      if hetero else "use one architecture for every client")
        raise IncompatibleComponentsError(
            f"fusion {config.fusion!r} averages parameters, so every client needs the same "
            f"small-model architecture, but the clients use {', '.join(archs)}",
            hint=f"{suggestion} (it fuses heterogeneous small models by distillation)")
    needs_fm = fusion.requires_foundation_model or "fm" in fusion.ClientSide.trains
    if needs_fm and components.optional("foundation_model") is None:
        raise IncompatibleComponentsError(
            f"fusion {config.fusion!r} needs a foundation model, but fm = 'none'",
            hint="pass --fm NAME; available: "
            + (", ".join(registry.names("foundation_model")) or "none installed"))
