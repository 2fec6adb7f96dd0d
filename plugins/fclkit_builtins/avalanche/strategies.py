"""Continual-learning strategies backed by Avalanche's own strategy classes and plugins.

This module is import-light (``attrs`` and ``fclkit`` only): the classes, their
names, descriptions and ``Options`` are all that registration and ``fclkit
plugins`` need. torch and Avalanche are imported when a strategy is *built*,
through :mod:`fclkit_builtins.avalanche.round_driver` (see its docstring for how federated
rounds map onto Avalanche experiences; :mod:`fclkit_builtins.avalanche.state_codec`
describes what the state contains).

Every strategy here is an :class:`AvalancheStrategy`: it says which Avalanche
template to instantiate (:meth:`AvalancheStrategy.avalanche_template`) and, for
strategies Avalanche ships only as a plugin, which plugins implement the method
(:meth:`AvalancheStrategy.method_plugins`). Anything else composes on top:

* ``extra_losses`` of :meth:`~AvalancheStrategy.train_round` are added to every
  mini-batch's loss by a small plugin (``before_backward``);
* extra Avalanche plugins can be given to any strategy, either per instance
  (``EWCStrategy(model, options, context, plugins=[MyPlugin()])``) or per class
  by overriding :meth:`AvalancheStrategy.make_plugins`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from fclkit.config import float_in, int_at_least, non_negative, one_of, positive_float, setting
from fclkit.interfaces import ContinualStrategy, ExtraLoss, NoOptions, TrainContext, TrainReport

if TYPE_CHECKING:
    import torch

    from fclkit.messages import RoundInfo
    from fclkit.stream import TaskData

#: a number >= 0 (a weight that may be switched off with 0)


class AvalancheStrategy(ContinualStrategy):
    """A fclkit strategy that drives an Avalanche strategy (template + plugins).

    ``Strategy(model, options, context, plugins=())`` builds the optimizer from
    ``context`` (``sgd``/``adam``, ``lr``, ``momentum``, ``weight_decay``), the
    Avalanche strategy with ``context.batch_size`` and ``context.device``, and a
    silent evaluator (no loggers, no periodic evaluation). ``self.model`` is
    trained in place: the Avalanche strategy and the optimizer keep referring to
    that very module, so weights loaded into it between rounds are used.

    Subclasses implement :meth:`avalanche_template` (and, for methods Avalanche
    ships only as a plugin, :meth:`method_plugins`).
    """

    Options = NoOptions
    #: what building any of them imports: Avalanche's templates and their plugins,
    #: torchvision and torch._dynamo (1.7 s), loaded while the run loads its data
    background_imports = (f"{__package__}.round_driver",
                          "avalanche.training.supervised.strategy_wrappers")

    def __init__(self, model: torch.nn.Module, options: Any = None,
                 context: TrainContext | None = None, *, plugins: Sequence[Any] = ()) -> None:
        if context is None:
            raise TypeError(f"{type(self).__name__} needs a TrainContext")
        super().__init__(model, options if options is not None else self.Options(), context)
        from .round_driver import RoundDriver

        self._driver = RoundDriver(self, extra_plugins=[*self.make_plugins(), *plugins])

    # ---------------------------------------------------------- what to build

    def avalanche_template(self) -> tuple[type, dict[str, Any]]:
        """The Avalanche strategy class and its method-specific keyword arguments.

        The common arguments (model, optimizer, criterion, batch sizes, device,
        plugins, evaluator) are filled in by the driver.
        """
        raise NotImplementedError

    def method_plugins(self) -> list[Any]:
        """Avalanche plugins implementing the method (appended after the extra plugins,
        as Avalanche's own strategy wrappers do). Default: none."""
        return []

    def make_plugins(self) -> list[Any]:
        """Extra Avalanche plugins of this class (override to compose behaviours)."""
        return []

    @property
    def avalanche_strategy(self) -> Any:
        """The underlying Avalanche strategy object (a ``SupervisedTemplate``)."""
        return self._driver.strategy

    # ------------------------------------------------------- the fclkit API

    def train_round(self, task: TaskData, *, round_info: RoundInfo, epochs: int,
                    extra_losses: Sequence[ExtraLoss] = ()) -> TrainReport:
        return self._driver.train_round(task, round_info=round_info, epochs=epochs,
                                        extra_losses=extra_losses)

    def state_dict(self) -> dict[str, Any]:
        return self._driver.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._driver.load_state_dict(state)


# ------------------------------------------------------------------ strategies


class NaiveStrategy(AvalancheStrategy):
    name = "naive"
    description = "fine-tuning without any protection against forgetting (Avalanche Naive)"

    def avalanche_template(self):
        from avalanche.training.supervised.strategy_wrappers import Naive

        return Naive, {}


class EWCStrategy(AvalancheStrategy):
    name = "ewc"
    description = "Elastic Weight Consolidation: Fisher-weighted penalty (Avalanche EWC)"

    @attrs.frozen
    class Options:
        ewc_lambda: float = setting(
            100.0, "weight of the EWC penalty (0 switches it off)", non_negative)
        mode: str = setting(
            "separate", "'separate': one penalty per past task; 'online': one running "
            "penalty with decayed importances", one_of("separate", "online"))
        decay_factor: float = setting(
            0.9, "decay of past importances in 'online' mode (ignored in 'separate')",
            float_in(0.0, 1.0))

    def avalanche_template(self):
        from avalanche.training.supervised.strategy_wrappers import EWC

        o = self.options
        return EWC, {"ewc_lambda": float(o.ewc_lambda), "mode": o.mode,
                     "decay_factor": float(o.decay_factor) if o.mode == "online" else None,
                     "keep_importance_data": False}


class LwFStrategy(AvalancheStrategy):
    name = "lwf"
    description = "Learning without Forgetting: distillation from the previous model (LwF)"

    @attrs.frozen
    class Options:
        alpha: float = setting(1.0, "weight of the distillation loss", non_negative)
        temperature: float = setting(2.0, "softmax temperature of the distillation",
                                     positive_float)

    def avalanche_template(self):
        from avalanche.training.supervised.strategy_wrappers import LwF

        return LwF, {"alpha": float(self.options.alpha),
                     "temperature": float(self.options.temperature)}


STORAGE_POLICIES = ("experience-balanced", "class-balanced", "reservoir")


class ReplayStrategy(AvalancheStrategy):
    name = "replay"
    description = "experience replay from a bounded memory (Avalanche ReplayPlugin)"

    @attrs.frozen
    class Options:
        mem_size: int = setting(200, "number of examples kept in the replay memory",
                                int_at_least(1))
        storage_policy: str = setting(
            "experience-balanced", "how the memory is filled: 'experience-balanced' "
            "(equal share per task), 'class-balanced' (equal share per class) or "
            "'reservoir' (reservoir sampling over all examples)", one_of(*STORAGE_POLICIES))
        batch_size_mem: int = setting(
            0, "memory examples added to each mini-batch (0: the training batch size)",
            int_at_least(0))

    def avalanche_template(self):
        from avalanche.training.supervised.strategy_wrappers import Naive

        return Naive, {}

    def method_plugins(self):
        from avalanche.training.plugins.replay import ReplayPlugin
        from avalanche.training.storage_policy import (
            ClassBalancedBuffer,
            ReservoirSamplingBuffer,
        )

        o = self.options
        policy = None  # ReplayPlugin's default: ExperienceBalancedBuffer (as Avalanche's Replay)
        if o.storage_policy == "class-balanced":
            policy = ClassBalancedBuffer(max_size=o.mem_size, adaptive_size=True)
        elif o.storage_policy == "reservoir":
            policy = ReservoirSamplingBuffer(max_size=o.mem_size)
        return [ReplayPlugin(mem_size=o.mem_size, batch_size_mem=o.batch_size_mem or None,
                             storage_policy=policy)]


class SIStrategy(AvalancheStrategy):
    name = "si"
    description = "Synaptic Intelligence: path-integral importance penalty (Avalanche SI plugin)"

    @attrs.frozen
    class Options:
        si_lambda: float = setting(10.0, "weight of the SI penalty", non_negative)
        eps: float = setting(1e-7, "damping of the importance estimate", positive_float)

    def avalanche_template(self):
        from avalanche.training.supervised.strategy_wrappers import Naive

        return Naive, {}

    def method_plugins(self):
        # Avalanche's SynapticIntelligence is Naive + this plugin; ours fixes its CPU bug
        from .avalanche_plugins import SIPlugin

        return [SIPlugin(si_lambda=float(self.options.si_lambda), eps=float(self.options.eps))]


class MASStrategy(AvalancheStrategy):
    name = "mas"
    description = "Memory Aware Synapses: output-sensitivity importance penalty (Avalanche MAS)"

    @attrs.frozen
    class Options:
        lambda_reg: float = setting(0.05, "weight of the MAS penalty", non_negative)
        alpha: float = setting(0.5, "weight of past importances when a task ends",
                               float_in(0.0, 1.0))

    def avalanche_template(self):
        from avalanche.training.supervised.strategy_wrappers import MAS

        return MAS, {"lambda_reg": float(self.options.lambda_reg),
                     "alpha": float(self.options.alpha), "verbose": False}


class AGEMStrategy(AvalancheStrategy):
    name = "agem"
    description = "Averaged GEM: gradient projection on a memory sample (Avalanche AGEMPlugin)"

    @attrs.frozen
    class Options:
        patterns_per_exp: int = setting(100, "examples kept in memory per task",
                                        int_at_least(1))
        sample_size: int = setting(64, "memory examples drawn for each reference gradient",
                                   int_at_least(1))

    def avalanche_template(self):
        from avalanche.training.supervised.strategy_wrappers import Naive

        return Naive, {}

    def method_plugins(self):
        from .avalanche_plugins import AGEMPlugin

        return [AGEMPlugin(self.options.patterns_per_exp, self.options.sample_size)]


class GEMStrategy(AvalancheStrategy):
    name = "gem"
    description = "Gradient Episodic Memory: QP gradient projection per past task (Avalanche GEM)"

    @attrs.frozen
    class Options:
        patterns_per_exp: int = setting(64, "examples kept in memory per task",
                                        int_at_least(1))
        memory_strength: float = setting(
            0.5, "margin added to the projection (favours backward transfer)", non_negative)

    def avalanche_template(self):
        from avalanche.training.supervised.strategy_wrappers import GEM

        return GEM, {"patterns_per_exp": self.options.patterns_per_exp,
                     "memory_strength": float(self.options.memory_strength)}


class DERStrategy(AvalancheStrategy):
    name = "der"
    description = "Dark Experience Replay(++): replay of logits and labels (Avalanche DER)"

    @attrs.frozen
    class Options:
        mem_size: int = setting(200, "number of examples (with their logits) in memory",
                                int_at_least(1))
        batch_size_mem: int = setting(
            0, "memory examples added to each mini-batch (0: the training batch size)",
            int_at_least(0))
        alpha: float = setting(0.1, "weight of the logit-matching (MSE) loss", non_negative)
        beta: float = setting(0.5, "weight of the memory-label loss (0: DER, >0: DER++)",
                              non_negative)

    def avalanche_template(self):
        from avalanche.training.supervised.der import DER

        o = self.options
        return DER, {"mem_size": o.mem_size, "batch_size_mem": o.batch_size_mem or None,
                     "alpha": float(o.alpha), "beta": float(o.beta)}


#: every strategy this plugin registers
STRATEGIES: tuple[type[AvalancheStrategy], ...] = (
    NaiveStrategy, EWCStrategy, LwFStrategy, ReplayStrategy, SIStrategy, MASStrategy,
    AGEMStrategy, GEMStrategy, DERStrategy,
)
