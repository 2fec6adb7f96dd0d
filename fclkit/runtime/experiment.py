"""The run's objects, built from its resolved components.

:class:`Experiment` turns a configuration into what a run needs -- the federated
stream, the foundation model, the server with its fusion, and any client by its
id -- and is what an engine drives (:class:`fclkit.interfaces.EngineHost`): the
engine builds clients where it runs them and hands an executor to
:meth:`Experiment.run_loop` (the loop itself is :mod:`fclkit.runtime.loop`).
Every process that hosts clients (a Flower node, a Ray actor) builds its own
Experiment from the same configuration.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from ..config import ExperimentConfig, assign_architectures
from ..errors import ConfigError, IncompatibleComponentsError
from ..interfaces import ClientExecutor, FusionContext, StreamSpec, TrainContext
from ..plugins import Registry
from ..progress import Reporter
from ..stream import read_images_as_float
from ..tracking import LoggerSet
from ..validation import UpdateValidator
from .client import Client
from .components import Components, check_compatibility, resolve
from .loop import TaskRoundLoop, check_stream
from .preload import BackgroundImports
from .seeding import derive_seed, seed_everything
from .server import Server


class Experiment:
    """A configuration resolved into components, and the objects a run is made of."""

    def __init__(self, config: ExperimentConfig, registry: Registry,
                 reporter: Reporter | None = None) -> None:
        #: perf_counter() at creation; :func:`fclkit.run` sets it to its own start
        self.created = time.perf_counter()
        self.registry = registry
        self.reporter = reporter or Reporter()
        #: the configuration with its ``auto`` values resolved (what results record)
        self.config: ExperimentConfig
        #: every component the run uses, with its options
        self.components: Components
        self.config, self.components = resolve(config, registry, warn=self.reporter.warn)
        c = self.config
        #: client id -> its small model's architecture
        self.architectures = assign_architectures(c.client_models, c.clients)
        check_compatibility(c, self.components, self.architectures, registry)
        #: the run's metric trackers (started by :func:`fclkit.run` once the results
        #: folder exists)
        self.loggers = LoggerSet(reporter=self.reporter)
        #: checks every upload, on the clients (to roll back) and again in the core
        self.validator = UpdateValidator(self.architectures, self.build_small_model,
                                         c.max_examples, fm_reference=self._fm_reference)

        self.stream: Any = None
        self.foundation_model: Any = None
        self.initial_fm_state: Any = None
        self.server: Server | None = None
        self.metrics: dict[str, Any] | None = None
        self.timings: dict[str, float] = {}
        #: where checkpoints go (None: no checkpoints) and a loaded one to continue from
        self.run_dir: Any = None
        self.resume_state: dict[str, Any] | None = None
        self._loop: TaskRoundLoop | None = None

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
                          public_fraction=c.public_fraction, scenario=c.scenario,
                          domain_transform=c.domain_transform,
                          rotation_angle=c.rotation_angle, class_order=c.class_order,
                          classes_per_client=c.classes_per_client)
        benchmark = self.components.one("benchmark")
        self.stream = benchmark.cls(benchmark.options).build(spec)
        check_stream(self.stream, spec, c.benchmark)
        modality = self.stream.input_spec.modality
        for name, model in self.components.named("client_model").items():
            if modality not in model.cls.modalities:
                raise IncompatibleComponentsError(
                    f"client model {name!r} takes {', '.join(sorted(model.cls.modalities))} "
                    f"inputs, but benchmark {c.benchmark!r} gives {modality}",
                    hint="pick architectures for this modality (`fclkit plugins`)")
        fm = self.components.optional("foundation_model")
        if fm is not None:
            self.reporter.phase(f"loading foundation model {c.fm}")
            torch.manual_seed(derive_seed(c.seed, "fm"))
            self.foundation_model = fm.cls(fm.options)
            set_cache_dir = getattr(self.foundation_model, "set_cache_dir", None)
            if set_cache_dir is not None:  # features on disk, shared by runs
                from ..feature_cache import resolve_cache_dir

                set_cache_dir(resolve_cache_dir(c.cache_dir))
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
        selected = self.components.one("fusion")
        fusion = selected.cls(selected.options)
        torch.manual_seed(derive_seed(c.seed, "fusion"))
        fusion.setup(FusionContext(
            client_ids=tuple(range(c.clients)), architectures=dict(self.architectures),
            num_classes=self.stream.num_classes, device=c.device, seed=c.seed,
            foundation_model=self.foundation_model, public=self.server_public_set(),
            build_small_model=self.build_small_model, input_spec=self.stream.input_spec,
            num_tasks=self.stream.num_tasks))
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
        selected = self.components.named("client_model")[architecture]
        model = selected.cls(selected.options).build(self.stream.input_spec,
                                                     self.stream.num_classes)
        if self.stream.input_spec.modality == "image":  # uint8 images read as x / 255
            read_images_as_float(model)
        return model.to(self.config.device)

    def _fm_reference(self) -> Any:
        """The FM part's initial state (what an uploaded FM part must look like)."""
        return self.initial_fm_state

    def build_client(self, client_id: int) -> Client:
        """Build client ``client_id`` from the configuration alone (any process can)."""
        c = self.config
        arch = self.architectures[client_id]
        model = self.build_small_model(arch)
        context = TrainContext(device=c.device, seed=c.seed, num_classes=self.stream.num_classes,
                               batch_size=c.batch_size, lr=c.lr, optimizer=c.optimizer,
                               momentum=c.momentum, weight_decay=c.weight_decay,
                               grad_clip=c.grad_clip)
        strategy = self.components.one("strategy")
        fusion = self.components.one("fusion")
        return Client(client_id, self.stream.clients[client_id], arch, model,
                      strategy.cls(model, strategy.options, context),
                      method=fusion.cls.ClientSide(fusion.options),
                      epochs=c.epochs, seed=c.seed, device=c.device,
                      foundation_model=self.foundation_model, fm_state=self.initial_fm_state,
                      validator=self.validator)

    def build_clients(self, client_ids: Iterable[int]) -> dict[int, Client]:
        """Clients by id (:meth:`build_client` each), built faster than one by one: the
        modules their components import (``background_imports``) load in a background
        thread while the foundation model computes its features of these clients' test
        sets, which their first evaluation reads (see :mod:`fclkit.runtime.preload`)."""
        ids = list(client_ids)
        imports = BackgroundImports(self.background_imports())
        if imports.running:
            self.warm_up_features(ids)
        imports.wait()
        return {cid: self.build_client(cid) for cid in ids}

    def background_imports(self) -> list[str]:
        """The modules the run's components import when they are built."""
        names: list[str] = []
        for selected in self.components.all():
            names += selected.cls.background_imports
            client_side = getattr(selected.cls, "ClientSide", None)
            names += getattr(client_side, "background_imports", ())
        return names

    def warm_up_features(self, client_ids: Iterable[int]) -> None:
        """Have the foundation model compute (and cache) its features of the test sets
        of ``client_ids`` -- what their first evaluation asks of it. Only a model that
        caches its features (a :class:`~fclkit.foundation.FrozenBackboneFoundationModel`)
        is asked: for any other the work would be done twice."""
        import torch

        from ..foundation import FrozenBackboneFoundationModel

        fm = self.foundation_model
        if not isinstance(fm, FrozenBackboneFoundationModel):
            return
        with torch.no_grad():
            for cid in client_ids:
                for task in self.stream.clients[cid].tasks:
                    if len(task.x_test):
                        fm.precompute(task.x_test)

    def make_engine(self) -> Any:
        engine = self.components.one("engine")
        return engine.cls(engine.options)

    def component_refs(self) -> list[dict[str, str]]:
        """Where every component of the run lives (see :meth:`Components.refs`)."""
        return self.components.refs()

    # ---------------------------------------------------------------- loop

    def run_loop(self, executor: ClientExecutor) -> dict[str, Any]:
        """Run every task and round through ``executor``; returns (and keeps) the metrics."""
        self._loop = TaskRoundLoop(self)
        self.metrics = self._loop.run(executor)
        return self.metrics

    def adopt(self, metrics: dict[str, Any], rows: list[dict[str, Any]],
              failures: list[dict[str, Any]]) -> None:
        """Take the results of a loop that ran in another process (an engine's server,
        e.g. Flower's deployment ServerApp) as this run's own."""
        self.metrics = metrics
        self.timings.update(metrics.get("timings_seconds", {}))
        self._loop = TaskRoundLoop(self)
        self._loop.state.rows = list(rows)
        self._loop.state.failures = list(failures)

    def partial_metrics(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """What is known so far (written when a run stops early, so nothing is lost)."""
        return (self._loop or TaskRoundLoop(self)).partial_metrics()
