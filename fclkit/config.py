"""Experiment configuration: one frozen attrs class, validated at construction.

Every field carries a ``help`` text (shown by ``fclkit run --help``,
``fclkit init`` and ``docs/configuration.md``). A configuration is loaded from
TOML (``fclkit run --config exp.toml``); CLI flags override the file::

    cl = "ewc"
    fusion = "fedavg"
    clients = 3
    [cl_options]
    ewc_lambda = 100.0

Components' own hyperparameters live in the ``*_options`` tables; they are
checked against the component's ``Options`` class when the run is built.
"""

from __future__ import annotations

import difflib
import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
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


def _name(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(attribute.name, value, "must be a non-empty component name")


def _names(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if (not isinstance(value, tuple) or not value
            or any(not isinstance(v, str) or not v.strip() for v in value)):
        raise ConfigError(
            attribute.name, value, "must be one name or a comma-separated list of names"
        )


def _table(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, Mapping) or any(not isinstance(k, str) for k in value):
        raise ConfigError(attribute.name, value, "must be a table of option = value")


def boolean(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(attribute.name, value, "must be true or false")


def _device(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, str) or not (
        value in ("cpu", "cuda", "mps") or value.startswith("cuda:")
    ):
        raise ConfigError(attribute.name, value, "must be 'cpu', 'cuda', 'cuda:N' or 'mps'")


def _to_names(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip()) or (value,)
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return value  # validator reports it


def _to_architectures(value: Any) -> Any:
    """``"mlp,cnn"`` / a list -> names assigned in turn; ``"0=mlp,1=cnn,default=lenet"``
    / a table -> architecture per client id (``default``: every client not listed)."""
    if isinstance(value, str) and "=" in value:
        pairs = [part.partition("=") for part in value.split(",") if part.strip()]
        return {k.strip(): v.strip() for k, _, v in pairs}
    if isinstance(value, Mapping):
        return {str(k).strip(): v for k, v in value.items()}
    return _to_names(value)


def _architectures(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, tuple):
        _names(inst, attribute, value)
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


def _to_dict(value: Any) -> Any:
    return dict(value) if isinstance(value, Mapping) else value


# ---------------------------------------------------------------- the config


@attrs.frozen(kw_only=True)
class ExperimentConfig:
    """Everything that defines one run. Frozen: use :meth:`evolve` for a changed copy."""

    # what to learn from
    benchmark: str = setting("digits", "benchmark to run on (`fclkit plugins` lists them)", _name)
    benchmark_options: dict = setting(
        attrs.Factory(dict), "options of the benchmark", _table, _to_dict)
    clients: int = setting(3, "number of clients", int_at_least(1))
    tasks: int = setting(5, "number of tasks each client learns in sequence", int_at_least(1))
    partition: str = setting(
        "iid", "how a task's data is split across clients: 'iid' or 'dirichlet' (non-IID)",
        one_of("iid", "dirichlet"))
    dirichlet_alpha: float = setting(
        0.5, "concentration of the Dirichlet partition (smaller = more skewed)", positive_float)
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

    # the small models and how they learn
    client_models: tuple | dict = setting(
        ("auto",), "small-model architecture ('auto': the benchmark's default), a comma list "
        "assigned to clients in turn (heterogeneous run), or one per client: "
        "'0=mlp,1=cnn,default=lenet' (a table in TOML)", _architectures, _to_architectures)
    model_options: dict = setting(
        attrs.Factory(dict), "options passed to every small-model architecture", _table, _to_dict)
    cl: str = setting("replay", "continual-learning strategy of the small models", _name)
    cl_options: dict = setting(attrs.Factory(dict), "options of the strategy", _table, _to_dict)
    epochs: int = setting(5, "local epochs per round", int_at_least(1))
    batch_size: int = setting(16, "mini-batch size of local training", int_at_least(1))
    lr: float = setting(0.05, "learning rate of local training", positive_float)
    optimizer: str = setting("sgd", "local optimiser: 'sgd' or 'adam'", one_of("sgd", "adam"))
    momentum: float = setting(0.9, "SGD momentum", float_in(0.0, 1.0, high_open=True))
    weight_decay: float = setting(0.0, "L2 weight decay", float_in(0.0, 1.0))
    grad_clip: float = setting(
        0.0, "clip the small models' gradient norm to this before every optimizer step "
        "(0: off); a cure for a model that diverges to NaN at the shared lr", non_negative)

    # the server side
    fusion: str = setting("one-by-one", "how the server fuses the clients' uploads", _name)
    fusion_options: dict = setting(attrs.Factory(dict), "options of the fusion", _table, _to_dict)
    fm: str = setting(
        "auto", "foundation model: a name, 'none', or 'auto' (the benchmark's default FM "
        "when the fusion needs one, else none)", _name)
    fm_options: dict = setting(
        attrs.Factory(dict), "options of the foundation model", _table, _to_dict)
    rounds: int = setting(3, "federated rounds per task", int_at_least(1))
    guidance_weight: float = setting(
        1.0, "weight of the foundation model's distillation term in the small models' loss "
        "(Small Model Continual Fine-tuning); 0 turns the guidance off",
        float_in(0.0, 1e6))
    guidance_temperature: float = setting(
        2.0, "softmax temperature of the foundation model's guidance", positive_float)
    guidance_examples: str = setting(
        "fm-better", "where the foundation model guides a small model, judged by the example's "
        "own label: 'all' (every training example), 'fm-correct' (where the FM predicts "
        "the label) or 'fm-better' (where the FM gives the label more probability than the "
        "small model does); examples of classes the FM does not know yet are guided in "
        "every mode", one_of("all", "fm-correct", "fm-better"))

    # how and where to run
    engine: str = setting("local", "execution engine ('local' runs clients in-process)", _name)
    engine_options: dict = setting(
        attrs.Factory(dict), "options of the engine", _table, _to_dict)
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
    loggers: tuple = setting(
        ("auto",), "metric trackers fed during the run, besides the results folder: 'auto' "
        "(every installed logger that is on by default: TensorBoard when installed), "
        "'none', or a comma list of names (`fclkit plugins` lists them)", _names, _to_names)
    logger_options: dict = setting(
        attrs.Factory(dict), "options of the loggers (a sub-table per logger, e.g. "
        "[logger_options.tensorboard])", _table, _to_dict)
    threads: int = setting(
        0, "torch CPU threads (0 = torch's default); 1 is often fastest for small models. "
        "Accuracies are bit-identical for the same seed and thread count",
        int_at_least(0))
    device: str = setting("cpu", "torch device: 'cpu', 'cuda', 'cuda:N' or 'mps'", _device)
    output: str = setting("runs", "folder in which each run writes its results folder",
                          _name, str)
    name: str = setting("", "name of the results folder (default: made from cl, fusion, seed "
                        "and time)", None, str)

    def __attrs_post_init__(self) -> None:
        if self.min_clients > self.clients:
            raise ConfigError("min_clients", self.min_clients,
                              f"must be at most clients = {self.clients}")

    def evolve(self, **changes: Any) -> ExperimentConfig:
        """A copy with ``changes`` applied (and validated)."""
        return attrs.evolve(self, **changes)

    @property
    def option_tables(self) -> dict[str, str]:
        """component field -> its options field."""
        return {"cl": "cl_options", "fusion": "fusion_options", "fm": "fm_options",
                "benchmark": "benchmark_options", "client_models": "model_options",
                "engine": "engine_options", "loggers": "logger_options"}

    def to_dict(self) -> dict[str, Any]:
        data = attrs.asdict(self, recurse=True)
        data["client_models"] = (dict(self.client_models)
                                 if isinstance(self.client_models, Mapping)
                                 else list(self.client_models))
        data["loggers"] = list(self.loggers)
        return data


FIELDS: dict[str, attrs.Attribute] = {a.name: a for a in attrs.fields(ExperimentConfig)}


def field_help(name: str) -> str:
    return FIELDS[name].metadata["help"]


def _unknown_key(key: str, known: Any, where: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f"did you mean {close[0]!r}?" if close else None
    return ConfigError(key, "(unknown key)", f"{where} has no such key; known keys: "
                       + ", ".join(sorted(known)), hint=hint)


def config_from_mapping(data: Mapping[str, Any], *, where: str = "the configuration"
                        ) -> ExperimentConfig:
    """Build a config from a mapping (e.g. parsed TOML); unknown keys are errors."""
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
    data: dict[str, Any] = dict(read_toml(path)) if path is not None else {}
    where = f"config file {path}" if path is not None else "the configuration"
    for key in data:
        if key not in FIELDS:
            raise _unknown_key(key, FIELDS, where)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
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
