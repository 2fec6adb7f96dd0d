"""The component kinds, declared once.

A *kind* is one pluggable role in a run: strategy, fusion, client model,
foundation model, benchmark, engine, logger. Each row of :data:`KINDS` says
everything about one kind; the rest of fclkit is derived from this table:

* the interface a component subclasses and the hook that registers it
  (:mod:`fclkit.hookspecs` makes one ``register_*`` hookspec per row);
* the configuration field that selects it and the table of its options
  (:class:`fclkit.config.ExperimentConfig` gets both fields per row);
* the CLI flags (``--cl NAME``, ``--cl-opt KEY=VALUE``);
* ``fclkit plugins`` (which lists kinds in this order), the registry,
  ``run.json``'s component records, the Flower engine's component references
  and the generated docs (``docs/configuration.md``, ``docs/cli.md`` and the
  hooks table of ``docs/plugins.md``).

Adding a kind is one row here (a test adds one and uses it end to end).
Importing this module is light: the interfaces are plain ABCs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from .fields import architectures, to_architectures
from .interfaces import (
    Benchmark,
    ClientModel,
    Component,
    ContinualStrategy,
    Engine,
    ExperimentLogger,
    FoundationModel,
    KnowledgeFusion,
)

#: the configuration value that selects no component of an optional kind
NONE = "none"


@attrs.frozen
class ComponentKind:
    """One pluggable role: its interface, hook, configuration field and flags."""

    #: the kind's key (registry, ``run.json``, ``fclkit plugins``), e.g. ``"strategy"``
    name: str
    #: the ABC every component of this kind subclasses
    interface: type[Component]
    #: the registration hook, e.g. ``"register_strategies"``
    hook: str
    #: the configuration field (and CLI flag ``--FIELD``) that selects the component(s)
    field: str
    #: the configuration table of the components' options (and CLI flag ``--X-opt``)
    options_field: str
    #: the field's default value
    default: Any
    #: the field's help text (``fclkit run --help``, ``docs/configuration.md``)
    help: str
    #: the field names several components (a comma list), each with its own options
    several: bool = False
    #: ``none`` selects no component of this kind
    optional: bool = False
    #: the field's validator and converter (default: one name, or a comma list of names)
    validator: Callable[..., Any] | None = None
    converter: Callable[..., Any] | None = None
    #: how a value of the field names the components to use, given the registry
    #: (default: the value's names, less ``none``); e.g. loggers expand ``auto``
    select: Callable[[Any, Any], list[str]] | None = None

    @property
    def label(self) -> str:
        """The kind in prose: ``"client model"``."""
        return self.name.replace("_", " ")

    @property
    def flag(self) -> str:
        """``--cl``, ``--client-models``."""
        return "--" + self.field.replace("_", "-")

    @property
    def options_flag(self) -> str:
        """``--cl-opt``, ``--model-opt``."""
        return "--" + self.options_field.removesuffix("_options").replace("_", "-") + "-opt"

    @property
    def hook_doc(self) -> str:
        """The hookspec's docstring."""
        names = "NAME[,NAME...]" if self.several else "NAME"
        return (f"Register :class:`fclkit.{self.interface.__name__}` subclasses "
                f"(``{self.flag} {names}``).\n\n"
                f":param register: call ``register(cls)`` for each {self.label}.")

    def names(self, value: Any, registry: Any) -> list[str]:
        """The names of the components ``value`` (this kind's field) selects, in order."""
        if self.select is not None:
            return list(self.select(value, registry))
        values = (list(value.values()) if isinstance(value, dict)
                  else list(value) if isinstance(value, (tuple, list)) else [value])
        return [n for n in dict.fromkeys(values) if not (self.optional and n == NONE)]


def _select_loggers(value: Any, registry: Any) -> list[str]:
    from .tracking import resolve_loggers

    return [entry.name for entry in resolve_loggers(value, registry)]


#: Every kind, in the order ``fclkit plugins``, the config and the docs show them.
KINDS: tuple[ComponentKind, ...] = (
    ComponentKind(
        "strategy", ContinualStrategy, "register_strategies", "cl", "cl_options",
        "replay", "continual-learning strategy of the small models"),
    ComponentKind(
        "fusion", KnowledgeFusion, "register_fusions", "fusion", "fusion_options",
        "one-by-one", "how the server fuses the clients' uploads (the federated method: its "
        "client side comes with it)"),
    ComponentKind(
        "client_model", ClientModel, "register_client_models", "client_models",
        "model_options", ("auto",),
        "small-model architecture ('auto': the benchmark's default), a comma list assigned "
        "to clients in turn (heterogeneous run), or one per client: "
        "'0=mlp,1=cnn,default=lenet' (a table in TOML)", several=True,
        validator=architectures, converter=to_architectures),
    ComponentKind(
        "foundation_model", FoundationModel, "register_foundation_models", "fm", "fm_options",
        "auto", "foundation model: a name, 'none', or 'auto' (the benchmark's default FM when "
        "the fusion needs one, else none)", optional=True),
    ComponentKind(
        "benchmark", Benchmark, "register_benchmarks", "benchmark", "benchmark_options",
        "digits", "benchmark to run on (`fclkit plugins` lists them)"),
    ComponentKind(
        "engine", Engine, "register_engines", "engine", "engine_options",
        "local", "execution engine ('local' runs clients in-process)"),
    ComponentKind(
        "logger", ExperimentLogger, "register_loggers", "loggers", "logger_options",
        ("auto",), "metric trackers fed during the run, besides the results folder: 'auto' "
        "(every installed logger that is on by default: TensorBoard when installed), "
        "'none', or a comma list of names (`fclkit plugins` lists them)",
        several=True, select=_select_loggers),
)


def by_name() -> dict[str, ComponentKind]:
    """Kind name -> kind (of the table as it is now)."""
    return {k.name: k for k in KINDS}


def by_field() -> dict[str, ComponentKind]:
    """Configuration field -> kind."""
    return {k.field: k for k in KINDS}
