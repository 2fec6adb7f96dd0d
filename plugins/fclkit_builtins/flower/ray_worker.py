"""Set-up of every Ray worker of a Flower simulation: import fclkit where the run did.

Ray puts the driver's working directory first on every worker's ``sys.path`` when
the worker runs its first task. Started from a folder that holds a folder named
``fclkit`` (the parent of a clone, say), a worker would then import that folder
instead of the package the run imported, and fail with ``module 'fclkit' has no
attribute 'hookimpl'``. :func:`setup` runs (as Ray's ``worker_process_setup_hook``)
before that, with the run's own ``sys.path`` in ``PYTHONPATH``: the modules it
imports stay the run's ones for the worker's life, whatever the working directory
holds. The worker keeps the run's working directory, so relative paths still work.
"""

from __future__ import annotations


def setup() -> None:
    """Import fclkit, its built-in plugins and the ClientApp from the run's paths."""
    import fclkit  # noqa: F401
    import fclkit_builtins.flower.client_app  # noqa: F401  (Flower's modules too)
