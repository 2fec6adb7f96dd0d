"""The wire protocol both sides share: message layout, record names, keys, helpers.

Message layout (server -> node), one message per client and step:

=================  =============================================================
``message_type``   ``query`` (which client do you serve? with ``bye`` in the header:
                   the run is over, a deployment node's worker may exit), ``train``
                   (one round of one task), ``evaluate`` (after a task, and once
                   before the first)
``content["fclkit"]``  ConfigRecord: ``client`` (id), ``config`` (the experiment
                   configuration as JSON), ``components`` (module/class of every
                   component, JSON), ``task``/``round``/``rounds_per_task`` or
                   ``task_index``, ``threads``, ``prune`` (deployment: keep only this
                   client's data), ``want_state`` (reply with the client's state:
                   the server writes checkpoints), ``payload`` (JSON skeleton of the
                   payload), ``state`` (JSON skeleton of a client state to load, or
                   absent)
``content["payload"]`` ArrayRecord: the payload's tensors. Payload of ``train``:
                   ``{"download": Download | None}``; of ``evaluate``:
                   ``{"download": ..., "global_fm": ...}``
``content["state"]``   ArrayRecord, only with ``state`` in the header: the tensors of
                   ``Client.state_dict()`` that the node loads *instead of* the state it
                   kept (a resumed run, or a node that took over a client)
=================  =============================================================

Reply (node -> server): ConfigRecord ``fclkit`` with ``status`` (``ok`` or
``failed``), ``reason``, ``client``, ``payload`` (skeleton), ``state`` (skeleton,
only when asked with ``want_state``), ArrayRecord ``payload``: an ``Upload`` as a
state (``train``) or the accuracies (``evaluate``), and ArrayRecord ``state``: the
client's state after the step (after a failed round: the state it was rolled back
to).

The server side is :mod:`.executor` (simulation and deployment), the node side
:mod:`.client_app`, the deployment ServerApp :mod:`.server_app`. This module
imports none of them.
"""

from __future__ import annotations

import importlib
import json
import re
from typing import Any

from flwr.app import ArrayRecord

#: record names in messages and in context.state
HEADER, PAYLOAD, STATE = "fclkit", "payload", "state"
STATE_META, STATE_ARRAYS = "fclkit.client", "fclkit.client.arrays"
#: node_config keys (and, in :mod:`.node_worker`, ``fclkit-node-worker`` and
#: ``fclkit-worker-idle``)
PARTITION_KEY, STATE_DIR_KEY = "partition-id", "fclkit-state-dir"
#: run_config keys of a deployment run (written into the generated Flower App)
RUN_CONFIG, RUN_COMPONENTS, RUN_RESULT = "fclkit-config", "fclkit-components", "fclkit-result"
#: ... the run's results folder (checkpoints go there; '' = none) and whether to resume it
RUN_DIR, RUN_RESUME = "fclkit-run-dir", "fclkit-resume"


# ---------------------------------------------------------- component references


def build_registry_for(refs: list[dict[str, str]]) -> Any:
    """The installed plugins, plus any component given as a class (research code), imported
    from where the run's own process found it."""
    from fclkit.errors import FclkitError
    from fclkit.plugins import build_registry, components_from_classes

    registry = build_registry()
    for ref in refs:
        if ref["name"] in registry.components[ref["kind"]]:
            continue
        try:
            obj: Any = importlib.import_module(ref["module"])
            for part in ref["qualname"].split("."):
                obj = getattr(obj, part)
        except Exception as exc:
            raise FclkitError(
                f"{ref['kind']} {ref['name']!r} ({ref['module']}.{ref['qualname']}) cannot be "
                f"imported in this Flower process: {type(exc).__name__}: {exc}",
                hint="install the plugin (or put the module on PYTHONPATH) on every node") from None
        components_from_classes(registry, [obj], plugin=ref["module"])
    return registry


def build_experiment(config_json: str, refs_json: str) -> Any:
    from fclkit.config import config_from_mapping
    from fclkit.runtime.experiment import Experiment

    config = config_from_mapping(json.loads(config_json))
    return Experiment(config, build_registry_for(json.loads(refs_json)))


# ------------------------------------------------------------------- fields


def field(record: Any, key: str, kind: type, default: Any = None) -> Any:
    """``record[key]`` checked to be a ``kind`` (a malformed message is an error, not a crash)."""
    value = record.get(key, default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"message field {key!r} is {value!r}, expected a {kind.__name__}")
    return value


def arrays(record: Any) -> ArrayRecord | None:
    return record if isinstance(record, ArrayRecord) else None


def one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().replace("\n", " ")
    hint = getattr(exc, "hint", None)
    return f"{text} (hint: {hint})" if hint else text


_ERROR_LINE = re.compile(r"^\s*((?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt"
                         r"|Warning)): (.*\S)\s*$")


def cause(reason: str, limit: int = 300) -> str:
    """One line naming the cause in an error text that may hold a traceback (what Flower
    passes on when a Ray actor or a ClientApp raised): its last ``SomeError: message``
    line, e.g. ``AttributeError: module 'fclkit' has no attribute 'hookimpl'``."""
    found = ""
    for line in reason.splitlines():
        match = _ERROR_LINE.match(line)
        if match:
            name = match.group(1).rpartition(".")[2]
            found = f"{name}: {match.group(2)}"
    text = found or " ".join(reason.split())
    if text.endswith("'>"):  # the end of Flower's "<class ...>:<'...'>" wrapping
        text = text[:-2]
    return text if len(text) <= limit else text[:limit - 3] + "..."
