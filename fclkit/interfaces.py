"""The interfaces a researcher subclasses and a plugin registers.

Each interface is a small abstract base class. Every component has a ``name``
(lowercase, unique within its kind) and an ``Options`` class: a frozen
``attrs`` class whose fields (each with a ``help`` text in its metadata) are the
component's hyperparameters, settable from TOML (``[cl_options]``) and from the
CLI (``--cl-opt key=value``).

When does the runtime call what? For every task ``t`` and round ``r``::

    client k: Download -> ContinualStrategy.train_round(..., extra_losses=method's) -> Upload
              (the fusion's ClientSide adds loss terms, trains the FM part, adds payload)
    server:   KnowledgeFusion.fuse(round_info, uploads, failures) -> FusionResult
    after the last round of a task: the core evaluates every model on every task

A component never computes metrics: the core does, from the models' predictions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import attrs

from .messages import Download, Failure, FusionResult, RoundInfo, Upload

if TYPE_CHECKING:
    from pathlib import Path

    import torch

    from .config import ExperimentConfig
    from .progress import Reporter
    from .runtime.client import Client
    from .stream import FederatedStream, InputSpec, PublicSet, TaskData


@attrs.frozen
class NoOptions:
    """Options of a component that has none."""


class Component(ABC):
    """What every registered component has: a name, a description and its options."""

    #: Unique lowercase name within its kind (``ewc``, ``fedavg``, ``mlp``, ...).
    name: ClassVar[str]
    #: One line shown by ``fclkit plugins``.
    description: ClassVar[str] = ""
    #: Frozen attrs class of hyperparameters; every field has ``metadata={"help": ...}``.
    Options: ClassVar[type] = NoOptions
    #: Modules this component imports when it is built (a heavy library such as
    #: Avalanche): a run imports them in a background thread while it loads its data
    #: (:mod:`fclkit.runtime.preload`). A hint only; the component still imports them.
    background_imports: ClassVar[tuple[str, ...]] = ()


#: An extra loss term added to a strategy's own loss: ``term(x, y, logits) -> scalar``.
ExtraLoss = Callable[["torch.Tensor", "torch.Tensor", "torch.Tensor"], "torch.Tensor"]


@attrs.frozen
class TrainContext:
    """Everything a strategy needs to know besides its model (fixed for a run)."""

    device: str
    seed: int
    num_classes: int
    batch_size: int
    lr: float
    optimizer: str
    momentum: float
    weight_decay: float
    #: clip the gradient's global norm to this before each optimizer step (0: off)
    grad_clip: float = 0.0


@attrs.frozen
class TrainReport:
    """What a strategy reports after a round of training."""

    num_examples: int
    loss: float = float("nan")
    steps: int = 0


class ContinualStrategy(Component):
    """Trains one client's small model on its task stream without temporal forgetting.

    One instance lives as long as its client. The runtime constructs it once
    with the client's small model (a ``torch.nn.Module`` it trains in place:
    when the server sends new small-model weights, the client loads them into
    that same module) and then, for every task and round, calls
    :meth:`train_round`. Whatever the strategy keeps between rounds and tasks
    (importances, previous model, replay buffer, ...) must be returned by
    :meth:`state_dict` and restored by :meth:`load_state_dict`, so that a client
    rebuilt from its state continues exactly as an uninterrupted one.
    """

    def __init__(self, model: torch.nn.Module, options: Any, context: TrainContext) -> None:
        self.model = model
        self.options = options
        self.context = context

    @abstractmethod
    def train_round(
        self,
        task: TaskData,
        *,
        round_info: RoundInfo,
        epochs: int,
        extra_losses: Sequence[ExtraLoss] = (),
    ) -> TrainReport:
        """Train ``self.model`` on ``task`` for ``epochs`` local epochs.

        Called by the client once per federated round. ``round_info.round == 0``
        marks the first round of a new task; ``round_info.is_last_round`` the
        last one, after which the strategy consolidates what it keeps against
        forgetting (EWC importances, LwF's previous model, replay memory, ...).
        Each of ``extra_losses`` (e.g. the foundation model's guidance) is added
        to the loss of every training mini-batch, replayed memory examples included.
        """

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything the strategy keeps between rounds, as tensors and JSON-able values.

        Called by the runtime when it checkpoints a client or moves it between
        processes. The small model's own weights are saved by the client, not here.
        """

    @abstractmethod
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (into a freshly built strategy)."""


class ClientModel(Component):
    """Builds a small model (a ``torch.nn.Module`` returning logits) for a client."""

    #: Modalities this architecture can take (``InputSpec.modality``).
    modalities: ClassVar[frozenset[str]] = frozenset({"image"})

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.Options()

    @abstractmethod
    def build(self, input_spec: InputSpec, num_classes: int) -> torch.nn.Module:
        """Return a new model for inputs of ``input_spec`` with ``num_classes`` outputs.

        Called once per client at the start of a run (under a fixed seed, so
        clients with the same architecture start from identical weights).
        """


class FoundationModel(Component):
    """A large pretrained model: a frozen backbone plus a small trainable part.

    One instance is loaded per process and shared: the runtime swaps the
    trainable part of each client in and out with :meth:`trainable_state` and
    :meth:`load_trainable_state`.

    Image inputs may arrive as ``uint8`` (0-255; benchmarks keep large image sets as
    bytes): read them with :func:`fclkit.stream.images_as_float`, a batch at a time.
    :class:`fclkit.foundation.FrozenBackboneFoundationModel` does; small models need
    nothing, the runtime converts their inputs (a forward pre-hook).
    """

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.Options()

    @abstractmethod
    def setup(self, input_spec: InputSpec, num_classes: int, device: str) -> None:
        """Load the backbone and build the trainable part. Called once per process."""

    @abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the current trainable part on ``x`` (differentiable w.r.t. it)."""

    def precompute(self, x: torch.Tensor) -> Any:
        """What :meth:`forward_precomputed` takes for ``x``: for a model with a frozen
        part, that part's output (so a caller that goes over the same inputs many times,
        as server distillation does, runs it once); by default ``x`` itself.

        ``forward_precomputed(precompute(x)[idx])`` equals ``forward(x[idx])``.
        """
        return x

    def forward_precomputed(self, z: Any) -> torch.Tensor:
        """Logits from rows of :meth:`precompute`'s output (by default :meth:`forward`)."""
        return self.forward(z)

    @abstractmethod
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters fusion may train (head, LoRA adapters, ...)."""

    @abstractmethod
    def trainable_state(self) -> dict[str, torch.Tensor]:
        """A copy of the trainable part's tensors (what travels in a Download)."""

    @abstractmethod
    def load_trainable_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Swap in a client's (or the global) trainable part."""


@attrs.frozen(eq=False)
class FusionContext:
    """What the server knows when a fusion is set up (called once per run)."""

    client_ids: tuple[int, ...]
    architectures: Mapping[int, str]
    num_classes: int
    device: str
    seed: int
    foundation_model: FoundationModel | None
    public: PublicSet | None
    #: Builds a fresh small model of an architecture name (to host uploaded weights).
    build_small_model: Callable[[str], torch.nn.Module]
    #: what the clients' inputs look like (None when the caller does not say)
    input_spec: InputSpec | None = None
    #: tasks in the run (None when the caller does not say)
    num_tasks: int | None = None


@attrs.frozen(eq=False)
class ClientRound:
    """One client's round as its method's :class:`ClientSide` sees it (built by the core)."""

    client_id: int
    round_info: RoundInfo
    #: the task trained in this round (its training and test split)
    task: TaskData
    #: the client's small model (trained in place by its strategy)
    small_model: torch.nn.Module
    #: training settings of the run (batch size, optimiser, device, seed, ...)
    context: TrainContext
    #: local epochs per round
    epochs: int
    #: the run's foundation model with this client's trainable part loaded (None: no FM)
    foundation_model: FoundationModel | None
    #: the classes this client's FM part was fused on (empty: not fused yet)
    fm_classes: tuple[int, ...]
    #: what the server sent for this round (None: nothing new since the last round)
    download: Download | None


class ClientSide:
    """The client half of a federated method: what each client does in a round besides
    its continual-learning strategy.

    A :class:`KnowledgeFusion` names its client side in its ``ClientSide`` class
    attribute; the core builds one per client with the fusion's options
    (``ClientSide(options)``), in whichever process the client runs, and every round
    calls, in this order:

    1. :meth:`extra_losses` -- loss terms added to every mini-batch of the small model's
       training (the paper's FM guidance is one), when ``"small"`` is in :attr:`trains`;
    2. :meth:`train_foundation` -- train the FM's trainable part on the client's private
       task, when ``"fm"`` is in :attr:`trains` (an FM-side FedAvg); the trained part
       is uploaded as ``Upload.fm_state`` and the client keeps it;
    3. :meth:`payload` -- tensors added to the upload (``Upload.payload``: e.g.
       outputs on the public set, class prototypes).

    Every download the client applies is first handed to :meth:`receive`.
    The default (this class) is what a plain method's clients do: train the small
    model with the strategy and upload its weights. Whatever a client side keeps
    between rounds goes in :meth:`state_dict`, checkpointed with the client.
    """

    #: which parts a client trains: ``"small"`` (its small model, with its strategy),
    #: ``"fm"`` (the foundation model's trainable part), or both
    trains: ClassVar[frozenset[str]] = frozenset({"small"})

    def __init__(self, options: Any = None) -> None:
        self.options = options

    def receive(self, download: Download) -> None:
        """Called with every download its client applies, once the weights it carries are
        loaded: before a round's training, and before the evaluation after a task's last
        round (that download is not seen by :meth:`extra_losses` of the next round). A
        method whose server sends more than weights (``Download.payload``: e.g. synthetic
        examples) keeps what it needs here, and in :meth:`state_dict`."""

    def extra_losses(self, round: ClientRound) -> Sequence[ExtraLoss]:
        """Loss terms ``term(x, y, logits)`` added to the small model's loss in this round."""
        return ()

    def train_foundation(self, round: ClientRound) -> TrainReport:
        """Train ``round.foundation_model``'s trainable part on ``round.task`` (in place).

        Called when ``"fm"`` is in :attr:`trains`. The default: cross-entropy over
        every class on the task's training examples, ``round.epochs`` epochs of
        mini-batches of ``round.context.batch_size`` with Adam at ``round.context.lr``;
        the frozen backbone runs once per round (``precompute``).
        """
        import torch
        import torch.nn.functional as F

        fm = round.foundation_model
        if fm is None:
            raise ValueError(f"{type(self).__name__} trains the foundation model's part, and "
                             "the run has no foundation model")
        x, y = round.task.x_train, round.task.y_train
        z = fm.precompute(x)
        optimizer = torch.optim.Adam(fm.trainable_parameters(), lr=round.context.lr)
        bs, losses = round.context.batch_size, []
        for _ in range(round.epochs):
            for idx in torch.randperm(len(y)).split(bs):
                logits = fm.forward_precomputed(z[idx])
                loss = F.cross_entropy(logits, y[idx].to(logits.device))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(float(loss))
        return TrainReport(num_examples=len(y),
                           loss=sum(losses) / len(losses) if losses else float("nan"),
                           steps=len(losses))

    def payload(self, round: ClientRound) -> dict[str, torch.Tensor]:
        """Tensors added to this round's upload (``Upload.payload``); none by default."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """What this client side keeps between rounds (tensors and JSON-able values)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


class KnowledgeFusion(Component):
    """Turns the clients' uploads into what each client downloads (server side)."""

    #: True when every client must use the same small-model architecture.
    requires_homogeneous_models: ClassVar[bool] = False
    #: True when the fusion needs a foundation model (``--fm`` other than ``none``).
    requires_foundation_model: ClassVar[bool] = False
    #: True when the fusion combines small models of different architectures (it is then
    #: suggested when a homogeneous-only fusion meets heterogeneous clients).
    fuses_heterogeneous_models: ClassVar[bool] = False
    #: The method's client half (see :class:`ClientSide`), built on every client with
    #: this fusion's options; the default trains the small model and uploads its weights.
    ClientSide: ClassVar[type[ClientSide]] = ClientSide

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.Options()

    @classmethod
    def foundation_model_options(cls, config: ExperimentConfig,
                                 foundation_model: type[FoundationModel]) -> Mapping[str, Any]:
        """Options this method needs the run's foundation model (its class) to be built
        with, given the run's configuration -- e.g. LoRA adapters for a method that trains
        them. They go under the user's own ``fm_options`` (the user's values win); raise
        :class:`fclkit.errors.ConfigError` when this FM cannot serve the method. Called
        once when the run is resolved, in every process; default: none."""
        return {}

    def setup(self, context: FusionContext) -> None:
        """Called once before the first round with what the server knows."""
        self.context = context

    @abstractmethod
    def fuse(
        self, round_info: RoundInfo, uploads: Sequence[Upload], failures: Sequence[Failure]
    ) -> FusionResult:
        """Fuse one round's uploads; called by the server after every round.

        ``failures`` lists the clients that did not answer this round; a fusion
        must work with whichever uploads arrived. Clients absent from the result's
        ``downloads`` keep what they have.
        """

    def state_dict(self) -> dict[str, Any]:
        """Server-side state to checkpoint (tensors and JSON-able values)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


@attrs.frozen
class StreamSpec:
    """How the run asks a benchmark to cut its data into a federated stream."""

    num_clients: int
    num_tasks: int
    seed: int
    partition: str  # "iid", "dirichlet" or "quantity"
    dirichlet_alpha: float
    public_fraction: float
    #: "class" (each task new classes) or "domain" (each task the same classes, a new domain)
    scenario: str = "class"
    #: domains made from a pool without its own: "rotated" or "permuted"
    domain_transform: str = "rotated"
    #: rotated domains: degrees between consecutive tasks
    rotation_angle: float = 45.0
    #: "shared" (one class order for every client) or "per-client"
    class_order: str = "shared"
    #: partition "quantity": classes of each task every client holds
    classes_per_client: int = 2


class Benchmark(Component):
    """Yields per-client task streams, their test splits and the server's public set."""

    #: The foundation model ``fm = "auto"`` picks for this benchmark (None: no default).
    default_foundation_model: ClassVar[str | None] = None
    #: The small-model architecture ``client_models = "auto"`` picks (None: no default).
    default_client_model: ClassVar[str | None] = None

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.Options()

    @abstractmethod
    def build(self, spec: StreamSpec) -> FederatedStream:
        """Return the stream for ``spec``. Called once per run, before any training.

        Raise :class:`fclkit.errors.BenchmarkUnavailableError` (at once, never a
        hang) when the data cannot be obtained, and
        :class:`fclkit.errors.ConfigError` when ``spec`` asks for what the data
        cannot give (e.g. more tasks than classes).
        """


class ClientExecutor(ABC):
    """Runs the clients' side of a round somewhere (in-process, on Flower nodes, ...)."""

    @abstractmethod
    def fit(
        self, round_info: RoundInfo, downloads: Mapping[int, Any]
    ) -> tuple[list[Upload], list[Failure]]:
        """Have every client of ``round_info.participants`` (every client when None) apply
        its Download (or ``None``), train with ``round_info.for_client(cid)``, and upload;
        the other clients are left untouched.

        Returns the uploads that arrived, ordered by client id, and the failures.
        """

    @abstractmethod
    def evaluate(
        self,
        task_index: int,
        downloads: Mapping[int, Any],
        global_fm: Download | None,
    ) -> dict[int, dict[str, list[float]]]:
        """Apply the last fusion's downloads, then evaluate every client.

        Returns, per client and per evaluated model (``small``, ``fm``,
        ``fm_global``), the accuracy on every task of the stream. Called by the
        core after the last round of every task, and once before the first task
        (``task_index == -1``, no downloads) for forward transfer. ``global_fm`` is
        the global FM part with its classes (``Server.global_fm()``): pass it to
        ``Client.evaluate`` unchanged.
        """

    def client_states(self) -> dict[int, Any] | None:
        """Every client's state (``Client.state_dict()``), for a checkpoint.

        ``None`` (the default) when this executor cannot provide them; the run then
        writes no checkpoints.
        """
        return None

    def load_client_states(self, states: Mapping[int, Any]) -> None:
        """Restore every client from :meth:`client_states` output (when resuming)."""
        raise NotImplementedError(f"{type(self).__name__} cannot resume from a checkpoint")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources at the end of a run."""


class EngineHost(Protocol):
    """What an engine gets from the run (an :class:`fclkit.runtime.Experiment` is one)."""

    #: the run's configuration (``fm = "auto"`` resolved)
    config: ExperimentConfig
    #: progress events (``client_done``, ``phase``, ``warn``, ...)
    reporter: Reporter

    def build_client(self, client_id: int) -> Client:
        """Client ``client_id``, built from the configuration alone (any process can)."""
        ...

    def build_clients(self, client_ids: Iterable[int]) -> dict[int, Client]:
        """Several clients by id, as :meth:`build_client` builds them, but faster: their
        components' heavy imports overlap with the FM's first pass over their test sets."""
        ...

    def run_loop(self, executor: ClientExecutor) -> dict[str, Any]:
        """Every task and round through ``executor``; returns the run's metrics."""
        ...

    def component_refs(self) -> list[dict[str, str]]:
        """Where every component of the run lives (kind, name, module, qualname), so a
        process that starts from nothing can import them."""
        ...

    def adopt(self, metrics: dict[str, Any], rows: list[dict[str, Any]],
              failures: list[dict[str, Any]]) -> None:
        """Report the results of a loop that ran in another process as this run's own."""
        ...


class Engine(Component):
    """Where the clients run. ``local`` runs them in-process; others distribute them."""

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.Options()

    @abstractmethod
    def run(self, host: EngineHost) -> None:
        """Drive ``host.run_loop(executor)`` with this engine's :class:`ClientExecutor`.

        ``host`` builds any client from its id (``host.build_client(cid)``), so an
        engine that runs clients in other processes can rebuild them there.
        """


class ExperimentLogger(Component):
    """Sends a run's metrics to a tracker (TensorBoard, Weights & Biases, MLflow, ...).

    The core writes the results folder (``metrics.json``, ``rounds.csv``) whatever
    loggers are used; a logger adds a live view. Metric names are ``/``-separated
    (``accuracy/fm/seen_tasks``, ``train/loss``; see ``docs/results-format.md``) and
    ``step`` counts rounds from the start of the run (``task * rounds + round + 1``).
    A logger that raises is switched off with a warning: a tracker's failure never
    stops a run or loses its results.
    """

    #: Used by ``loggers = "auto"`` (the default) when :meth:`unavailable_reason` is None.
    enabled_by_default: ClassVar[bool] = False
    #: Needs the run's results folder (skipped by ``auto`` when a run writes none).
    needs_run_dir: ClassVar[bool] = False

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.Options()

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """None when this logger can run here, else what is missing and how to get it
        (e.g. ``"the tensorboard package is not installed: pip install tensorboard"``)."""
        return None

    def start(self, run_dir: Path | None, config: Mapping[str, Any]) -> None:  # noqa: B027
        """Called once before the first round (and again when a run is resumed)."""

    @abstractmethod
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Record scalar ``metrics`` at ``step``."""

    def finish(self, status: str) -> None:  # noqa: B027
        """Called once at the end: ``status`` is ``finished``, ``failed`` or ``interrupted``."""

