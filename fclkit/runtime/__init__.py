"""The federated runtime: clients, server, the experiment loop and the local engine.

Imported only when a run starts (it imports torch).
"""

from .client import Client
from .experiment import Experiment, RunResult, run
from .server import Server

__all__ = ["Client", "Experiment", "RunResult", "Server", "run"]
