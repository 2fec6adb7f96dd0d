"""Experiment configuration: one frozen attrs class, validated at construction.

Every field carries a ``help`` text (shown by ``fclkit run --help``,
``fclkit init`` and ``docs/configuration.md``). A configuration is loaded from
TOML (``fclkit run --config exp.toml``); CLI flags override the file::

    cl = "ewc"
    fusion = "fedavg"
    clients = 3
    [cl_options]
    ewc_lambda = 100.0

The fields that select components (``cl``, ``fusion``, ``client_models``, ...)
and their option tables (``cl_options``, ...) are made from the component kinds
(:data:`fclkit.kinds.KINDS`), one pair per kind. Components' own hyperparameters
are checked against the component's ``Options`` class when the run is built.
"""

from __future__ import annotations

import difflib
import tomllib
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from . import kinds
from .errors import ConfigError, FclkitDeprecationWarning
from .fields import (  # re-exported: plugins' Options use them
    assign_architectures,
    boolean,
    component_name,
    component_names,
    float_in,
    int_at_least,
    join_tasks_list,
    non_negative,
    one_of,
    options_table,
    positive_float,
    setting,
    to_dict,
    to_ints,
    to_names,
    torch_device,
)

__all__ = [
    "DEPRECATED_FIELDS", "ExperimentConfig", "FIELDS", "assign_architectures", "boolean",
    "build_options", "commented_toml", "config_from_mapping", "dump_toml", "field_help",
    "float_in", "int_at_least", "load_config", "non_negative", "one_of", "options_help",
    "parse_option_pairs", "positive_float", "read_toml", "setting",
]

#: Fields a configuration may still use, and where their value goes now: the
#: option of the fusion (the federated method) that replaced them.
DEPRECATED_FIELDS: dict[str, tuple[str, str]] = {
    "guidance_weight": ("fusion_options", "guidance_weight"),
    "guidance_temperature": ("fusion_options", "guidance_temperature"),
    "guidance_examples": ("fusion_options", "guidance_examples"),
}


def _with_component_fields(cls: type) -> type:
    """Add, before attrs sees ``cls``, a selection field and an options table per kind."""
    annotations: dict[str, str] = {}
    for kind in kinds.KINDS:
        validator = kind.validator or (component_names if kind.several else component_name)
        converter = kind.converter or (to_names if kind.several else None)
        annotations[kind.field] = "Any"
        setattr(cls, kind.field, setting(kind.default, kind.help, validator, converter))
        annotations[kind.options_field] = "dict"
        help_text = (f"options of the {kind.label}s: a key applies to every selected "
                     f"{kind.label} that has it, a sub-table [{kind.options_field}.NAME] to "
                     "one" if kind.several else f"options of the {kind.label}")
        setattr(cls, kind.options_field,
                setting(attrs.Factory(dict), help_text, options_table, to_dict))
    cls.__annotations__ = {**annotations, **cls.__dict__.get("__annotations__", {})}
    return cls


# ---------------------------------------------------------------- the config


@attrs.frozen(kw_only=True)
@_with_component_fields
class ExperimentConfig:
    """Everything that defines one run. Frozen: use :meth:`evolve` for a changed copy.

    The component fields (``cl``, ``fusion``, ``client_models``, ``fm``, ``benchmark``,
    ``engine``, ``loggers`` and their ``*_options`` tables) come from
    :data:`fclkit.kinds.KINDS`; the fields below are the run's own.
    """

    # what to learn from
    clients: int = setting(3, "number of clients", int_at_least(1))
    tasks: int = setting(5, "number of tasks each client learns in sequence", int_at_least(1))
    partition: str = setting(
        "iid", "how a task's data is split across clients: 'iid', 'dirichlet' (non-IID "
        "proportions) or 'quantity' (label-quantity skew: each client holds only "
        "classes_per_client of each task's classes)", one_of("iid", "dirichlet", "quantity"))
    dirichlet_alpha: float = setting(
        0.5, "concentration of the Dirichlet partition (smaller = more skewed)", positive_float)
    classes_per_client: int = setting(
        2, "partition 'quantity' ('#C=k'): how many of each task's classes every client "
        "holds (each class split evenly among the clients holding it)", int_at_least(1))
    scenario: str = setting(
        "class", "what the tasks are: 'class' (class-incremental: each task brings new "
        "classes) or 'domain' (domain-incremental: every task the same classes, each task a "
        "new domain -- the benchmark's domain column, else domain_transform)",
        one_of("class", "domain"))
    domain_transform: str = setting(
        "rotated", "scenario 'domain' on a benchmark with no domains of its own (digits, "
        "mnist, imagefolder, ...): 'rotated' (task t's images rotated by (t-1) x "
        "rotation_angle degrees) or 'permuted' (a fixed pixel permutation per task, drawn "
        "under the seed; task 1 unpermuted); train, test and public set alike",
        one_of("rotated", "permuted"))
    rotation_angle: float = setting(
        45.0, "domain_transform 'rotated': degrees (counter-clockwise) between consecutive "
        "tasks", float_in(-360.0, 360.0))
    class_order: str = setting(
        "shared", "'shared': one class order (under the seed) for every client; "
        "'per-client': each client draws its own, so a class arrives in different tasks on "
        "different clients (class scenario only)", one_of("shared", "per-client"))
    public_fraction: float = setting(
        0.1, "fraction of the data held out as the server's public/proxy set "
        "(when the benchmark has no public set of its own)",
        float_in(0.0, 1.0, high_open=True))
    public_labels: int = setting(
        0, "labelled examples per class the server holds in its public set; the rest of "
        "the set is unlabelled. 0 (the default, as in the paper's setting): no labels. "
        "fm-only trains on them, one-by-one adds a cross-entropy term on them "
        "(fusion option label_weight); a number at least the set's size per class labels "
        "every example", int_at_least(0))

    # how the small models learn
    epochs: int = setting(5, "local epochs per round", int_at_least(1))
    batch_size: int = setting(16, "mini-batch size of local training", int_at_least(1))
    lr: float = setting(0.05, "learning rate of local training", positive_float)
    optimizer: str = setting("sgd", "local optimiser: 'sgd' or 'adam'", one_of("sgd", "adam"))
    momentum: float = setting(0.9, "SGD momentum", float_in(0.0, 1.0, high_open=True))
    weight_decay: float = setting(0.0, "L2 weight decay", float_in(0.0, 1.0))
    grad_clip: float = setting(
        0.0, "clip the small models' gradient norm to this before every optimizer step "
        "(0: off); a cure for a model that diverges to NaN at the shared lr", non_negative)
    rounds: int = setting(3, "federated rounds per task", int_at_least(1))
    participation: float = setting(
        1.0, "fraction of the clients (of those that have joined) that train in each round, "
        "sampled under the seed: floor(fraction x clients), at least 1; the others upload "
        "nothing and keep their state that round", float_in(0.0, 1.0, low_open=True))
    join_tasks: tuple = setting(
        (), "the task (1-based) each client joins at, one entry per client, e.g. '1,1,3' "
        "(client 2 trains from task 3 on); empty: every client from task 1. A client's "
        "metrics cover the tasks from the one it joins at", join_tasks_list, to_ints)

    # how and where to run
    seed: int = setting(0, "random seed: the same seed gives the same accuracies",
                        int_at_least(0))
    min_clients: int = setting(
        1, "a round completes when at least this many clients delivered a valid update; "
        "fewer stops the run (resume it with --resume)", int_at_least(1))
    client_timeout: float = setting(
        0.0, "seconds a client may take for one round before its update is discarded and the "
        "client rolled back (0 = no limit)", float_in(0.0, 1e9))
    max_examples: int = setting(
        10_000_000, "largest example count a client may report; more is rejected as absurd",
        int_at_least(1))
    checkpoint: bool = setting(
        True, "write a checkpoint at the end of every round so `fclkit run --resume RUN_DIR` "
        "can continue the run", boolean)
    threads: int = setting(
        0, "torch CPU threads (0 = torch's default); 1 is often fastest for small models. "
        "Accuracies are bit-identical for the same seed and thread count",
        int_at_least(0))
    device: str = setting("cpu", "torch device: 'cpu', 'cuda', 'cuda:N' or 'mps'",
                          torch_device)
    output: str = setting("runs", "folder in which each run writes its results folder",
                          component_name, str)
    name: str = setting("", "name of the results folder (default: made from cl, fusion, seed "
                        "and time)", None, str)
    cache_dir: str = setting(
        "none", "folder of an on-disk cache of the foundation model's frozen-backbone "
        "features, shared by runs: 'none' (the default) keeps them in memory for the run "
        "only; 'auto' is $FCLKIT_CACHE_DIR, else $XDG_CACHE_HOME/fclkit/features, else "
        "~/.cache/fclkit/features; or a folder. A run finds there the features earlier "
        "runs computed: bit-identical when those runs were of the same configuration, "
        "while features another configuration computed in other backbone batches may "
        "differ in their last bits (see docs/performance.md)", None, str)

    if TYPE_CHECKING:  # the component fields, made from fclkit.kinds.KINDS
        def __getattr__(self, name: str) -> Any: ...

    def __attrs_post_init__(self) -> None:
        if self.min_clients > self.clients:
            raise ConfigError("min_clients", self.min_clients,
                              f"must be at most clients = {self.clients}")
        joins = self.join_task_of()
        if self.join_tasks:
            if len(self.join_tasks) != self.clients:
                raise ConfigError("join_tasks", _joined(self.join_tasks),
                                  f"needs one task per client: {self.clients} entries, "
                                  f"not {len(self.join_tasks)}")
            late = max(range(self.clients), key=lambda k: joins[k])
            if joins[late] >= self.tasks:
                raise ConfigError("join_tasks", _joined(self.join_tasks),
                                  f"client {late} joins at task {joins[late] + 1}, but there "
                                  f"are only {self.tasks} tasks",
                                  hint=f"every entry between 1 and {self.tasks}")
            if min(joins.values()) > 0:
                raise ConfigError("join_tasks", _joined(self.join_tasks),
                                  "no client joins at task 1, so nobody would train it",
                                  hint="let at least one client join at task 1")
        first = round_participants(self.participation,
                                   sum(1 for j in joins.values() if j == 0))
        if self.min_clients > first:
            raise ConfigError("min_clients", self.min_clients,
                              f"only {first} client(s) train in a round of task 1 "
                              f"(participation = {self.participation:g}"
                              + (", join_tasks" if self.join_tasks else "") + ")",
                              hint=f"--min-clients {first} or a larger participation")
        if self.class_order == "per-client" and self.scenario == "domain":
            raise ConfigError("class_order", self.class_order,
                              "with scenario = 'domain' every task holds every class: there "
                              "is no class order to give each client",
                              hint="class_order = shared, or scenario = class")

    def join_task_of(self) -> dict[int, int]:
        """Client id -> the 0-based task it joins at (0 for every client by default)."""
        if not self.join_tasks:
            return dict.fromkeys(range(self.clients), 0)
        return {k: int(t) - 1 for k, t in enumerate(self.join_tasks)}

    def evolve(self, **changes: Any) -> ExperimentConfig:
        """A copy with ``changes`` applied (and validated)."""
        return attrs.evolve(self, **changes)

    def selection(self, kind: str) -> Any:
        """The value of the field that selects components of ``kind`` (a kind's name)."""
        return getattr(self, kinds.by_name()[kind].field)

    def options_of(self, kind: str) -> dict[str, Any]:
        """The options table of ``kind``'s components."""
        return getattr(self, kinds.by_name()[kind].options_field)

    def to_dict(self) -> dict[str, Any]:
        data = attrs.asdict(self, recurse=True)
        for kind in kinds.KINDS:
            value = getattr(self, kind.field)
            if isinstance(value, Mapping):
                data[kind.field] = dict(value)
            elif isinstance(value, tuple):
                data[kind.field] = list(value)
        return data


FIELDS: dict[str, attrs.Attribute] = {a.name: a for a in attrs.fields(ExperimentConfig)}


def round_participants(fraction: float, joined: int) -> int:
    """How many of ``joined`` clients train in a round at ``participation = fraction``:
    floor(fraction x joined), at least 1 (none when none has joined)."""
    if joined <= 0:
        return 0
    return max(1, min(joined, int(fraction * joined + 1e-9)))


def _joined(value: Any) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, (tuple, list)) else str(value)


def field_help(name: str) -> str:
    return FIELDS[name].metadata["help"]


def _unknown_key(key: str, known: Any, where: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f"did you mean {close[0]!r}?" if close else None
    return ConfigError(key, "(unknown key)", f"{where} has no such key; known keys: "
                       + ", ".join(sorted(known)), hint=hint)


def _renamed(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``data`` with every deprecated field moved to its new place (one warning each)."""
    out = dict(data)
    for old, (table, key) in DEPRECATED_FIELDS.items():
        if old not in out:
            continue
        value = out.pop(old)
        warnings.warn(f"{where}: {old} is deprecated, write it as [{table}] {key} = "
                      f"{value!r} (--{table.removesuffix('_options')}-opt {key}=...)",
                      FclkitDeprecationWarning, stacklevel=3)
        out[table] = {key: value, **dict(out.get(table) or {})}
    return out


def config_from_mapping(data: Mapping[str, Any], *, where: str = "the configuration"
                        ) -> ExperimentConfig:
    """Build a config from a mapping (e.g. parsed TOML); unknown keys are errors."""
    data = _renamed(data, where)
    for key in data:
        if key not in FIELDS:
            raise _unknown_key(key, FIELDS, where)
    return ExperimentConfig(**data)


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("config", str(path), "file not found") from None
    except UnicodeDecodeError:
        raise ConfigError("config", str(path), "is not UTF-8 text (a TOML file must be)"
                          ) from None
    except OSError as exc:
        raise ConfigError("config", str(path), f"cannot be read: {exc.strerror}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", str(path), f"is not valid TOML: {exc}") from None


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
                ) -> ExperimentConfig:
    """Read a TOML file (if given), then apply ``overrides`` (e.g. CLI flags).

    Option tables merge key by key: ``--cl-opt ewc_lambda=5`` keeps the file's
    other ``[cl_options]``.
    """
    where = f"config file {path}" if path is not None else "the configuration"
    data = _renamed(read_toml(path), where) if path is not None else {}
    for key in data:
        if key not in FIELDS:
            raise _unknown_key(key, FIELDS, where)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    for key, value in _renamed(given, "the command line").items():
        if key.endswith("_options") and isinstance(data.get(key), Mapping):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return config_from_mapping(data, where=where)


def dump_toml(config: ExperimentConfig) -> str:
    import tomli_w

    return tomli_w.dumps(config.to_dict())


# --------------------------------------------------------- component options


def parse_option_pairs(pairs: list[str] | None, flag: str) -> dict[str, Any]:
    """Parse ``key=value`` strings; values are read as TOML literals, else as strings."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(flag, pair, "must look like key=value, e.g. ewc_lambda=100")
        raw = raw.strip()
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        # ``mlp.hidden=64`` sets ``hidden`` in the sub-table ``mlp`` (as in TOML)
        *path, leaf = [part.strip() for part in key.split(".")]
        table = out
        for part in path:
            if not isinstance(table.setdefault(part, {}), dict):
                raise ConfigError(flag, pair, f"{part!r} is set both as a value and a table")
            table = table[part]
        table[leaf] = value
    return out


def build_options(options_cls: type, values: Mapping[str, Any], *, component: str,
                  table: str) -> Any:
    """Instantiate a component's ``Options`` from a table, naming any bad key."""
    known = {a.name: a for a in attrs.fields(options_cls)} if attrs.has(options_cls) else {}
    for key in values:
        if key not in known:
            allowed = ", ".join(sorted(known)) or "none (this component takes no options)"
            close = difflib.get_close_matches(key, list(known), n=1)
            hint = f"did you mean {close[0]!r}?" if close else None
            if isinstance(values[key], Mapping) and values[key]:
                # ``--fusion-opt one-by-one.lr=0.01``: a sub-table named like a component
                inner = next(iter(values[key]))
                hint = (f"this {table} table is for one component: set its options without "
                        f"a name prefix, e.g. {inner}={values[key][inner]!r} "
                        f"(not {key}.{inner}=...)")
            raise ConfigError(f"{table}.{key}", values[key],
                              f"{component} has no option {key!r}; its options: {allowed}",
                              hint=hint)
    try:
        return options_cls(**values)
    except ConfigError as exc:
        raise ConfigError(f"{table}.{exc.field}", exc.value, exc.allowed, hint=exc.hint) from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(table, dict(values), f"rejected by {component}: {exc}") from None


def options_help(options_cls: type) -> list[tuple[str, Any, str]]:
    """(name, default, help) of every field of an Options class."""
    if not attrs.has(options_cls):
        return []
    rows = []
    for a in attrs.fields(options_cls):
        default = a.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory()
        rows.append((a.name, default, a.metadata.get("help", "")))
    return rows


def commented_toml() -> str:
    """An example configuration with every field, its default and its help text."""
    import tomli_w

    lines = ["# fclkit experiment configuration -- run it with: fclkit run --config FILE",
             "# Every field is optional; CLI flags override what is written here.", ""]
    tables = []
    for name, attribute in FIELDS.items():
        default: Any = attribute.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory()
        if isinstance(default, dict):
            tables.append((name, attribute))
            continue
        if isinstance(default, tuple):
            default = list(default)
        lines.append(f"# {attribute.metadata['help']}")
        lines.append(tomli_w.dumps({name: default}).strip())
        lines.append("")
    for name, attribute in tables:
        lines.append(f"# {attribute.metadata['help']} (see `fclkit plugins --options`)")
        lines.append(f"[{name}]")
        lines.append("")
    return "\n".join(lines)
