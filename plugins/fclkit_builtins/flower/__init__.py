"""Built-in engine ``flower``: run any fclkit experiment through Flower (flwr).

``--engine flower`` drives the same task/round loop as the ``local`` engine
(:meth:`fclkit.runtime.Experiment.run_loop`), but every client round is a Flower
message to a node that takes the client (kept between messages where the process
lives on), restores its continual-learning state from the node's
``context.state`` unless it already holds it, trains or evaluates, and saves the
state back. Two modes (``--engine-opt mode=...``):

* ``simulation`` (default): many clients on one machine, or on a Ray cluster,
  through Flower's Simulation Runtime (Ray actors, per-client CPU/GPU resources);
* ``deployment``: real SuperNodes connected to a SuperLink; each node serves one
  client (its ``partition-id`` from ``--node-config``), through a worker process
  that keeps the prepared experiment between messages (:mod:`.node_worker`;
  ``--node-config fclkit-node-worker=false`` turns it off). See docs/distributed.md.

Modules: :mod:`.engine` (the engine and its options), :mod:`.protocol` (the
message layout and what both sides share), :mod:`.executor` (the server side of
a round), :mod:`.client_app` (the node), :mod:`.server_app` (the deployment
ServerApp), :mod:`.codec`, :mod:`.simulation`, :mod:`.ray_worker` (the Ray workers'
set-up hook), :mod:`.deployment`, :mod:`.node_worker` (a deployment node's worker).

This module and :mod:`.engine` are import-light (``attrs`` and ``fclkit`` only):
flwr, Ray and torch are imported when a run starts. Without flwr, choosing the
engine stops at once with a one-line :class:`fclkit.FclkitError`.
"""

import fclkit


@fclkit.hookimpl
def register_engines(register):
    from .engine import FlowerEngine

    register(FlowerEngine)
