"""The federated runtime: clients, server, the experiment, its loop and its lifecycle.

* :mod:`.components` -- a configuration resolved into components and options;
* :mod:`.experiment` -- the run's objects (stream, FM, server, clients);
* :mod:`.loop` -- the task/round loop and its checkpoints;
* :mod:`.lifecycle` -- a run's lifecycle (results folder, loggers, threads, resume);
* :mod:`.client`, :mod:`.server` -- the two sides of a round.

Imported only when a run starts (it imports torch).
"""

from .client import Client, EvaluationMemo
from .experiment import Experiment
from .lifecycle import RunResult, run
from .server import Server

__all__ = ["Client", "EvaluationMemo", "Experiment", "RunResult", "Server", "run"]
