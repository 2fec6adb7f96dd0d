"""Built-in loggers: ``tensorboard`` (on by default) and ``wandb`` (when asked for).

``tensorboard`` is used whenever the ``tensorboard`` package is installed
(Avalanche depends on it, so it normally is) and writes ``RUN_DIR/tensorboard/``;
look at one or several runs with ``tensorboard --logdir runs``. Writing is done
by ``torch.utils.tensorboard.SummaryWriter``.

``wandb`` (``--loggers wandb``) sends the same scalars to Weights & Biases through
the ``wandb`` package (also an Avalanche dependency); ``mode = "offline"`` keeps
the run in ``RUN_DIR/wandb/`` for a later ``wandb sync``.
"""

from __future__ import annotations

import fclkit


@fclkit.hookimpl
def register_loggers(register):
    from .tensorboard import TensorBoardLogger
    from .wandb_logger import WandbLogger

    register(TensorBoardLogger)
    register(WandbLogger)
