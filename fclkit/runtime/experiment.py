"""One experiment: resolve components, build clients and server, run the task/round loop.

The loop (:meth:`Experiment.run_loop`) is the same for every engine; an engine
only decides *where* clients run, through a :class:`~fclkit.interfaces.ClientExecutor`::

    evaluate every client before training (for forward transfer)
    for each task t:
        for each round r:
            clients: apply last download, train round r of task t, upload
            server:  fusion -> downloads (+ global FM state)
        clients: apply the last downloads, evaluate every model on every task
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from ..config import ExperimentConfig, assign_architectures, build_options
from ..errors import ConfigError, FclkitError, IncompatibleComponentsError
from ..interfaces import FusionContext, StreamSpec, TrainContext
from ..messages import Download, Failure, RoundInfo
from ..metrics import across_clients, summarize
from ..plugins import Registered, Registry, build_registry, components_from_classes
from ..progress import Reporter
from ..tracking import (
    AUTO,
    LoggerSet,
    final_scalars,
    resolve_loggers,
    round_scalars,
    task_scalars,
)
from ..validation import UpdateValidator
from .client import Client
from .seeding import derive_seed, seed_everything
from .server import Server


@attrs.define
class LoopState:
    """What the run loop accumulates (all of it goes into checkpoints)."""

    initial: dict[int, Any] = attrs.field(factory=dict)
    evals: list[dict[int, Any]] = attrs.field(factory=list)
    rows: list[dict[str, Any]] = attrs.field(factory=list)
    failures: list[dict[str, Any]] = attrs.field(factory=list)
    pending: dict[int, Download] = attrs.field(factory=dict)


def _download_state(d: Download) -> dict[str, Any]:
    return {"small_state": d.small_state, "fm_state": d.fm_state, "metadata": d.metadata}


def _keys_to_str(d: dict) -> dict:
    return {str(k): v for k, v in d.items()}


def _keys_to_int(d: dict) -> dict:
    return {int(k): v for k, v in d.items()}


@attrs.define
class RunResult:
    """What :func:`run` returns: the configuration, the results folder and the metrics."""

    config: ExperimentConfig
    run_dir: Path | None
    metrics: dict[str, Any]

    def accuracy_matrix(self, model: str = "small", client: int | None = None
                        ) -> list[list[float]]:
        """``R[i][j]`` for one client, or the mean over clients when ``client`` is None."""
        if client is None:
            return self.metrics["mean"][model]["accuracy_matrix"]
        return self.metrics["per_client"][str(client)][model]["accuracy_matrix"]

    def summary(self, model: str = "small") -> dict[str, Any]:
        return self.metrics["mean"][model]


class Experiment:
    """Resolves a configuration into components and runs it (through an engine)."""

    def __init__(self, config: ExperimentConfig, registry: Registry,
                 reporter: Reporter | None = None) -> None:
        #: perf_counter() at creation; :func:`run` sets it to its own start
        self.created = time.perf_counter()
        self.registry = registry
        self.reporter = reporter or Reporter()
        self.strategy = registry.get("strategy", config.cl)
        self.fusion_entry = registry.get("fusion", config.fusion)
        self.benchmark_entry = registry.get("benchmark", config.benchmark)
        self.engine_entry = registry.get("engine", config.engine)
        #: the configuration with ``fm = "auto"`` resolved (what results record)
        self.config = c = config.evolve(fm=self._resolve_fm(config),
                                        client_models=self._resolve_models(config))
        self.fm_entry = None if c.fm == "none" else registry.get("foundation_model", c.fm)
        #: client id -> its small model's architecture
        self.architectures = assign_architectures(c.client_models, c.clients)
        self.model_entries = {n: registry.get("client_model", n)
                              for n in dict.fromkeys(self.architectures.values())}

        self.strategy_options = build_options(
            self.strategy.cls.Options, c.cl_options, component=f"strategy {c.cl!r}",
            table="cl_options")
        self.fusion_options = build_options(
            self.fusion_entry.cls.Options, c.fusion_options, component=f"fusion {c.fusion!r}",
            table="fusion_options")
        self.benchmark_options = build_options(
            self.benchmark_entry.cls.Options, c.benchmark_options,
            component=f"benchmark {c.benchmark!r}", table="benchmark_options")
        self.engine_options = build_options(
            self.engine_entry.cls.Options, c.engine_options, component=f"engine {c.engine!r}",
            table="engine_options")
        self.fm_options = None if self.fm_entry is None else build_options(
            self.fm_entry.cls.Options, c.fm_options, component=f"foundation model {c.fm!r}",
            table="fm_options")
        self.model_options = self._per_component_options(
            self.model_entries, c.model_options, "model_options", "client model")
        self.logger_entries = {e.name: e for e in resolve_loggers(c.loggers, registry)}
        self.logger_options = self._per_component_options(
            self.logger_entries, c.logger_options, "logger_options", "logger")
        #: the run's metric trackers (started by :func:`run` once the results folder exists)
        self.loggers = LoggerSet(reporter=self.reporter)
        self._check_compatibility()

        self.stream: Any = None
        self.foundation_model: Any = None
        self.initial_fm_state: Any = None
        self.server: Server | None = None
        self.metrics: dict[str, Any] | None = None
        self.timings: dict[str, float] = {}
        #: where checkpoints go (None: no checkpoints) and a loaded one to continue from
        self.run_dir: Path | None = None
        self.resume_state: dict[str, Any] | None = None

    # ------------------------------------------------------------ resolving

    def _resolve_fm(self, config: ExperimentConfig) -> str:
        if config.fm != "auto":
            return config.fm
        if not self.fusion_entry.cls.requires_foundation_model:
            return "none"
        default = self.benchmark_entry.cls.default_foundation_model
        if default is None:
            raise IncompatibleComponentsError(
                f"fusion {config.fusion!r} needs a foundation model and benchmark "
                f"{config.benchmark!r} names no default one",
                hint="pass --fm NAME; available: "
                + (", ".join(self.registry.names("foundation_model")) or "none installed"))
        return default

    def _resolve_models(self, config: ExperimentConfig) -> tuple | dict:
        """``client_models`` with every ``auto`` replaced by the benchmark's default."""
        names = (config.client_models.values() if isinstance(config.client_models, Mapping)
                 else config.client_models)
        if "auto" not in names:
            return config.client_models
        default = self.benchmark_entry.cls.default_client_model
        if default is None:
            raise IncompatibleComponentsError(
                f"benchmark {config.benchmark!r} names no default small model",
                hint="pass --client-models NAME; available: "
                + (", ".join(self.registry.names("client_model")) or "none installed"))
        if isinstance(config.client_models, Mapping):
            return {k: default if v == "auto" else v for k, v in config.client_models.items()}
        return tuple(default if v == "auto" else v for v in config.client_models)

    @staticmethod
    def _per_component_options(entries: Mapping[str, Registered], table: Mapping[str, Any],
                               table_name: str, label: str) -> dict[str, Any]:
        """Options of several selected components (architectures, loggers) from one table:
        flat keys go to every selected component that has them; ``{name = {...}}`` to one."""
        per_name: dict[str, dict[str, Any]] = {name: {} for name in entries}
        for key, value in table.items():
            if key in entries and isinstance(value, Mapping):
                per_name[key].update(value)
                continue
            takers = [n for n, e in entries.items() if attrs.has(e.cls.Options)
                      and key in {a.name for a in attrs.fields(e.cls.Options)}]
            if not takers:
                raise ConfigError(
                    f"{table_name}.{key}", value,
                    f"no selected {label} (" + (", ".join(entries) or "none selected")
                    + ") has this option", hint="`fclkit plugins --options` lists options")
            for n in takers:
                per_name[n][key] = value
        return {n: build_options(e.cls.Options, per_name[n], component=f"{label} {n!r}",
                                 table=table_name)
                for n, e in entries.items()}

    def start_loggers(self, run_dir: Path | None) -> None:
        """Start the selected loggers (those needing a results folder only when there is one)."""
        loggers = []
        for name, entry in self.logger_entries.items():
            if entry.cls.needs_run_dir and run_dir is None:
                if list(self.config.loggers) != [AUTO]:
                    self.reporter.warn(f"logger {name!r} writes into the results folder and "
                                       "this run writes none; it is skipped")
                continue
            loggers.append(entry.cls(self.logger_options[name]))
        self.loggers = LoggerSet(loggers, self.reporter)
        self.loggers.start(run_dir, self.config.to_dict())

    def _check_compatibility(self) -> None:
        c = self.config
        fusion = self.fusion_entry.cls
        archs = sorted(set(self.architectures.values()))
        if fusion.requires_homogeneous_models and len(archs) > 1:
            hetero = [n for n, e in self.registry.components["fusion"].items()
                      if e.cls.fuses_heterogeneous_models]
            suggestion = ("use --fusion " + " or --fusion ".join(sorted(hetero))
                          if hetero else "use one architecture for every client")
            raise IncompatibleComponentsError(
                f"fusion {c.fusion!r} averages parameters, so every client needs the same "
                f"small-model architecture, but the clients use {', '.join(archs)}",
                hint=f"{suggestion} (it fuses heterogeneous small models by distillation)")
        if fusion.requires_foundation_model and self.fm_entry is None:
            raise IncompatibleComponentsError(
                f"fusion {c.fusion!r} needs a foundation model, but fm = 'none'",
                hint="pass --fm NAME; available: "
                + (", ".join(self.registry.names("foundation_model")) or "none installed"))

    # ------------------------------------------------------------ building

    def prepare(self) -> None:
        """Load the data, the foundation model and the fusion (once per process)."""
        import torch

        c = self.config
        if c.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError("device", c.device, "CUDA is not available on this machine",
                              hint="use --device cpu")
        started = time.perf_counter()
        seed_everything(c.seed)
        self.reporter.phase(f"loading benchmark {c.benchmark}")
        spec = StreamSpec(num_clients=c.clients, num_tasks=c.tasks, seed=c.seed,
                          partition=c.partition, dirichlet_alpha=c.dirichlet_alpha,
                          public_fraction=c.public_fraction)
        self.stream = self.benchmark_entry.cls(self.benchmark_options).build(spec)
        modality = self.stream.input_spec.modality
        for name, entry in self.model_entries.items():
            if modality not in entry.cls.modalities:
                raise IncompatibleComponentsError(
                    f"client model {name!r} takes {', '.join(sorted(entry.cls.modalities))} "
                    f"inputs, but benchmark {c.benchmark!r} gives {modality}",
                    hint="pick architectures for this modality (`fclkit plugins`)")
        if self.fm_entry is not None:
            self.reporter.phase(f"loading foundation model {c.fm}")
            torch.manual_seed(derive_seed(c.seed, "fm"))
            self.foundation_model = self.fm_entry.cls(self.fm_options)
            self.foundation_model.setup(self.stream.input_spec, self.stream.num_classes,
                                        c.device)
            self.initial_fm_state = self.foundation_model.trainable_state()
        self.setup_server()
        self.timings["setup"] = time.perf_counter() - started

    def setup_server(self) -> None:
        """A fresh server with the configured fusion (after the stream and FM are loaded);
        the FM's trainable part starts from its initial state."""
        import torch

        c = self.config
        if self.foundation_model is not None:
            self.foundation_model.load_trainable_state(self.initial_fm_state)
        fusion = self.fusion_entry.cls(self.fusion_options)
        torch.manual_seed(derive_seed(c.seed, "fusion"))
        fusion.setup(FusionContext(
            client_ids=tuple(range(c.clients)), architectures=dict(self.architectures),
            num_classes=self.stream.num_classes, device=c.device, seed=c.seed,
            foundation_model=self.foundation_model, public=self.server_public_set(),
            build_small_model=self.build_small_model))
        self.server = Server(fusion)
        self.server.global_fm_state = self.initial_fm_state

    def server_public_set(self) -> Any:
        """The public set as the server sees it: every input, and only the labels of the
        ``public_labels`` budget (the benchmark may know more; the fusion never sees them)."""
        c, public = self.config, self.stream.public
        if public is None:
            if c.public_labels > 0:
                raise ConfigError("public_labels", c.public_labels,
                                  f"benchmark {c.benchmark!r} gives the server no public set",
                                  hint="set public_fraction > 0 (e.g. 0.1)")
            return None
        if c.public_labels > 0 and len(public.labelled_index) == 0:
            raise ConfigError("public_labels", c.public_labels,
                              f"benchmark {c.benchmark!r} has no labels for its public set",
                              hint="set public_labels = 0 (an unlabelled public set)")
        return public.server_view(c.public_labels, derive_seed(c.seed, "public-labels"))

    def build_small_model(self, architecture: str) -> Any:
        """A fresh small model; same architecture + seed -> identical initial weights."""
        import torch

        torch.manual_seed(derive_seed(self.config.seed, "model", architecture))
        entry = self.model_entries[architecture]
        model = entry.cls(self.model_options[architecture]).build(
            self.stream.input_spec, self.stream.num_classes)
        return model.to(self.config.device)

    def build_client(self, client_id: int) -> Client:
        """Build client ``client_id`` from the configuration alone (any process can)."""
        c = self.config
        arch = self.architectures[client_id]
        model = self.build_small_model(arch)
        context = TrainContext(device=c.device, seed=c.seed, num_classes=self.stream.num_classes,
                               batch_size=c.batch_size, lr=c.lr, optimizer=c.optimizer,
                               momentum=c.momentum, weight_decay=c.weight_decay,
                               grad_clip=c.grad_clip)
        strategy = self.strategy.cls(model, self.strategy_options, context)
        return Client(client_id, self.stream.clients[client_id], arch, model, strategy,
                      epochs=c.epochs, seed=c.seed, device=c.device,
                      foundation_model=self.foundation_model, fm_state=self.initial_fm_state,
                      guidance_weight=c.guidance_weight,
                      guidance_temperature=c.guidance_temperature,
                      guidance_examples=c.guidance_examples)

    def make_engine(self) -> Any:
        return self.engine_entry.cls(self.engine_options)

    # ---------------------------------------------------------------- loop

    def run_loop(self, executor: Any) -> dict[str, Any]:
        """Run every task and round through ``executor``; returns (and keeps) the metrics.

        Continues from ``self.resume_state`` (a loaded checkpoint) when it is set.
        """
        if self.server is None:
            raise RuntimeError("Experiment.prepare() must be called before run_loop()")
        c = self.config
        T, R, K = self.stream.num_tasks, c.rounds, c.clients
        rep = self.reporter
        timings = self.timings
        for key in ("client_train", "fusion", "evaluation"):
            timings.setdefault(key, 0.0)
        #: checks every upload before fusion (an executor may also use it, see local.py)
        self.validator = validator = UpdateValidator(self.architectures, self.build_small_model,
                                                     c.max_examples)
        loop = LoopState()
        self._partial = loop
        start = 0  # index of the first (task, round) step to run
        rep.run_started(T, R, K)
        if self.resume_state is not None:
            start = self._restore(self.resume_state, executor, loop)
            rep.phase(f"resumed after task {start // R + 1 if start % R else start // R}, "
                      f"round {R if start % R == 0 else start % R}")
        else:
            t0 = time.perf_counter()
            loop.initial = executor.evaluate(-1, {}, self.server.global_fm())
            timings["evaluation"] += time.perf_counter() - t0

        if start == 0:  # from fclkit.run's start (or the Experiment's) to the first round
            timings["to_first_round"] = time.perf_counter() - self.created
        for step in range(start, T * R):
            t, r = divmod(step, R)
            info = RoundInfo(task=t, round=r, rounds_per_task=R)
            rep.round_started(t, r)
            t0 = time.perf_counter()
            uploads, fails = executor.fit(info, loop.pending)
            timings["client_train"] += time.perf_counter() - t0
            accepted = []
            for u in uploads:
                reason = validator.check(u)
                if reason is None:
                    accepted.append(u)
                else:
                    fails.append(Failure(u.client_id, f"rejected update: {reason}"))
            for f in fails:
                loop.failures.append({"task": t, "round": r, "client": f.client_id,
                                      "reason": f.reason})
                rep.warn(f"client {f.client_id} failed in task {t + 1} round {r + 1}: "
                         f"{f.reason}")
            if len(accepted) < c.min_clients:
                raise FclkitError(
                    f"only {len(accepted)} of {K} clients delivered a valid update in task "
                    f"{t + 1}, round {r + 1} (min_clients = {c.min_clients}): "
                    + "; ".join(f"client {f.client_id}: {f.reason}" for f in fails),
                    hint="rerun with --debug for the traceback; the run can be continued "
                    "with --resume after a fix",
                ) from getattr(executor, "last_error", None)
            delivered = {cid: loop.pending.get(cid) for cid in range(K)}
            t0 = time.perf_counter()
            result = self.server.aggregate(info, accepted, fails)
            fusion_seconds = time.perf_counter() - t0
            timings["fusion"] += fusion_seconds
            self._record_round(loop, info, uploads, accepted, delivered, result,
                               fusion_seconds)
            self.loggers.log(round_scalars(loop.rows[-K:]), step + 1)
            loop.pending = dict(result.downloads)
            rep.round_done(t, r)
            if info.is_last_round:
                t0 = time.perf_counter()
                loop.evals.append(executor.evaluate(t, loop.pending,
                                                    self.server.global_fm()))
                timings["evaluation"] += time.perf_counter() - t0
                loop.pending = {}
                rep.task_done(t, self._mean_last(loop.evals[-1], t))
                self.loggers.log(task_scalars(
                    {cid: {m: [ev[cid][m] for ev in loop.evals] for m in loop.evals[-1][cid]}
                     for cid in loop.evals[-1]}), step + 1)
            self._checkpoint(executor, loop, info, step)
        self.metrics = self._assemble(loop.initial, loop.evals, loop.rows, loop.failures)
        return self.metrics

    def _record_round(self, loop: LoopState, info: RoundInfo, uploads: list,
                      accepted: list, delivered: dict, result: Any,
                      fusion_seconds: float) -> None:
        by_client = {u.client_id: u for u in uploads}
        ok = {u.client_id for u in accepted}
        for cid in range(self.config.clients):
            u = by_client.get(cid)
            d_in = delivered[cid]
            d_out = result.downloads.get(cid)
            loop.rows.append({
                "task": info.task, "round": info.round, "client": cid,
                "status": "ok" if cid in ok else ("rejected" if u is not None else "failed"),
                "architecture": self.architectures[cid],
                "num_examples": u.num_examples if u else 0,
                "train_loss": u.metadata.get("train_loss") if u else None,
                "train_seconds": u.metadata.get("train_seconds") if u else None,
                "bytes_up": u.nbytes if u else 0,
                "bytes_down": d_out.nbytes if d_out is not None else 0,
                "bytes_down_received": d_in.nbytes if d_in is not None else 0,
                "fusion_seconds": fusion_seconds,
            })

    # ---------------------------------------------------------- checkpoints

    def _checkpoint(self, executor: Any, loop: LoopState, info: RoundInfo, step: int) -> None:
        if self.run_dir is None or not self.config.checkpoint:
            return
        client_states = executor.client_states()
        if client_states is None:  # this engine keeps client state where we cannot see it
            return
        from ..checkpoint import rng_state, save_checkpoint

        state = {
            "step": step, "task": info.task, "round": info.round,
            "server": self.server.state_dict() if self.server else {},
            "clients": {str(k): v for k, v in client_states.items()},
            "pending": {str(k): _download_state(d) for k, d in loop.pending.items()},
            "initial": _keys_to_str(loop.initial),
            "evals": [_keys_to_str(ev) for ev in loop.evals],
            "rows": loop.rows, "failures": loop.failures,
            "timings": dict(self.timings), "rng": rng_state(),
        }
        save_checkpoint(self.run_dir, state, task=info.task, round=info.round, step=step)

    def _restore(self, state: dict[str, Any], executor: Any, loop: LoopState) -> int:
        from ..checkpoint import set_rng_state

        if self.server is not None:
            self.server.load_state_dict(state["server"])
        executor.load_client_states({int(k): v for k, v in state["clients"].items()})
        loop.pending = {int(k): Download(**v) for k, v in state["pending"].items()}
        loop.initial = _keys_to_int(state["initial"])
        loop.evals = [_keys_to_int(ev) for ev in state["evals"]]
        loop.rows = list(state["rows"])
        loop.failures = list(state["failures"])
        for key, value in state["timings"].items():
            self.timings[key] = value
        set_rng_state(state["rng"])
        return int(state["step"]) + 1

    @staticmethod
    def _mean_last(ev: dict[int, dict[str, list[float]]], t: int) -> dict[str, float]:
        models = next(iter(ev.values())).keys()
        return {m: sum(sum(ev[k][m][: t + 1]) / (t + 1) for k in ev) / len(ev) for m in models}

    def _assemble(self, initial: dict, evals: list, rows: list, failures: list) -> dict[str, Any]:
        K = self.config.clients
        T = len(evals)
        models = list(evals[-1][0].keys()) if evals else []
        per_client: dict[str, dict[str, Any]] = {}
        for cid in range(K):
            per_client[str(cid)] = {}
            for m in models:
                matrix = [evals[i][cid][m] for i in range(T)]
                init = initial.get(cid, {}).get(m)
                per_client[str(cid)][m] = summarize(matrix, init)
        mean = {m: across_clients([per_client[str(k)][m] for k in range(K)]) for m in models}
        return {
            "schema": "fclkit.metrics/1",
            "accuracy_unit": "fraction of test examples classified correctly (0..1)",
            "models": models,
            "tasks": T, "clients": K, "rounds_per_task": self.config.rounds,
            "class_order": list(self.stream.class_order),
            "task_classes": [list(t.classes) for t in self.stream.clients[0].tasks],
            "architectures": {str(k): v for k, v in self.architectures.items()},
            "mean": mean,
            "per_client": per_client,
            "communication": {
                "bytes_up_total": sum(r["bytes_up"] for r in rows),
                "bytes_down_total": sum(r["bytes_down"] for r in rows),
                "per_client_round": [{k: r[k] for k in ("task", "round", "client", "bytes_up",
                                                        "bytes_down")} for r in rows],
            },
            "timings_seconds": dict(self.timings),
            "failures": failures,
        }

    def partial_metrics(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """What is known so far (written when a run stops early, so nothing is lost)."""
        loop = getattr(self, "_partial", None) or LoopState()
        return {"schema": "fclkit.metrics/1", "complete": False,
                "tasks_evaluated": len(loop.evals),
                "evaluations": [_keys_to_str(ev) for ev in loop.evals],
                "failures": loop.failures, "timings_seconds": dict(self.timings)}, loop.rows


def run(config: ExperimentConfig, *, registry: Registry | None = None,
        components: Iterable[type] = (), plugins: Iterable[Any] = (),
        reporter: Reporter | None = None, write_results: bool = True,
        resume: str | Path | None = None) -> RunResult:
    """Run one experiment and (by default) write its results folder.

    :param config: the experiment (ignored when resuming: the run's own config is used).
    :param registry: components to use (default: every installed plugin).
    :param components: component classes from research code, used by their ``name``
        without packaging (e.g. ``components=[MyStrategy]`` then ``cl="my-strategy"``).
    :param plugins: extra plugin modules/objects with ``@fclkit.hookimpl`` functions.
    :param reporter: progress events (the CLI passes rich progress bars).
    :param write_results: False to keep everything in memory (no checkpoints either).
    :param resume: a results folder whose run stopped early: continue it from its
        latest checkpoint, in the same folder.
    """
    from .. import results

    started = time.perf_counter()
    if registry is None:
        registry = build_registry(extra_plugins=plugins)
    components_from_classes(registry, components)
    for broken in registry.broken:
        (reporter or Reporter()).warn(f"plugin {broken.plugin!r} was not loaded: {broken.error}")
    resume_state = None
    if resume is not None:
        from ..checkpoint import load_checkpoint
        from ..config import load_config

        run_dir: Path | None = Path(resume)
        config = load_config(Path(resume) / "config.toml")
        resume_state = load_checkpoint(resume)
    experiment = Experiment(config, registry, reporter)
    experiment.created = started
    config = experiment.config  # fm = "auto" resolved
    import torch

    threads_before = torch.get_num_threads()
    if config.threads:  # restored when the run ends: no global state leaks to the caller
        torch.set_num_threads(config.threads)
    if resume is None:
        run_dir = results.create_run_dir(config) if write_results else None
        if run_dir is not None:
            results.write_start(run_dir, config, component_records(experiment))
    elif run_dir is not None:
        results.mark_resumed(run_dir)
    experiment.run_dir = run_dir
    experiment.resume_state = resume_state
    loggers = experiment.loggers
    try:
        experiment.start_loggers(run_dir)
        loggers = experiment.loggers
        experiment.prepare()
        experiment.make_engine().run(experiment)
    except BaseException as exc:
        if run_dir is not None:
            partial, rows = experiment.partial_metrics()
            results.write_failure(run_dir, partial, rows, exc)
        loggers.finish("interrupted" if isinstance(exc, KeyboardInterrupt) else "failed")
        raise
    finally:
        experiment.reporter.close()
        torch.set_num_threads(threads_before)
    metrics = experiment.metrics or {}
    metrics["timings_seconds"]["total"] = (
        time.perf_counter() - started + (resume_state or {}).get("timings", {}).get("total", 0))
    rows = experiment.partial_metrics()[1]
    if run_dir is not None:
        results.write_end(run_dir, metrics, rows)
    if not loggers.fed:  # the engine ran the loop in another process
        loggers.replay(metrics, rows, config.rounds)
    loggers.log(final_scalars(metrics), int(metrics.get("tasks", config.tasks)) * config.rounds)
    loggers.finish("finished")
    return RunResult(config=config, run_dir=run_dir, metrics=metrics)


def _used_components(experiment: Experiment) -> list[tuple[Registered, Any]]:
    """(entry, its resolved options) of every component the run uses."""
    e = experiment
    used = [(e.strategy, e.strategy_options), (e.fusion_entry, e.fusion_options),
            (e.benchmark_entry, e.benchmark_options), (e.engine_entry, e.engine_options),
            *((entry, e.model_options[n]) for n, entry in e.model_entries.items()),
            *((entry, e.logger_options[n]) for n, entry in e.logger_entries.items())]
    if e.fm_entry is not None:
        used.append((e.fm_entry, e.fm_options))
    return used


def component_records(experiment: Experiment) -> list[dict[str, Any]]:
    """What run.json records of each component: name, provenance and every option's
    value (defaults included, so a plugin default that changes later still shows)."""
    from ..results import component_record

    return [component_record(entry, options) for entry, options in _used_components(experiment)]
