"""Validation of client updates before any fusion sees them.

The core checks every :class:`~fclkit.messages.Upload` against what the server
knows: the architecture the client declared at the start of the run and the
tensor names, shapes and dtypes of that architecture. An upload is rejected --
recorded as a failure with its reason, never fused -- when

* it claims another client id, or an architecture other than the declared one;
* a tensor is missing, unexpected, of the wrong shape or dtype, or not a tensor;
* a floating-point tensor holds NaN or infinity;
* its example count is not an integer between 1 and ``max_examples``;
* it carries an FM part (``fm_state``) unlike the run's FM's trainable part (the same
  checks of names, shapes, dtypes and values), or one when the run has no FM;
* its method payload (``payload``) is not a mapping of names to finite tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .messages import Upload

MAX_REASONS = 3


class UpdateValidator:
    """Checks uploads against a reference state per architecture (built once, lazily)."""

    def __init__(self, architectures: Mapping[int, str],
                 build_small_model: Callable[[str], Any], max_examples: int,
                 fm_reference: Callable[[], Mapping[str, Any] | None] | None = None) -> None:
        self.architectures = dict(architectures)
        self._build = build_small_model
        self.max_examples = max_examples
        #: the FM's initial trainable state (None: the run has no FM), asked for lazily
        self._fm_reference = fm_reference or (lambda: None)
        self._reference: dict[str, dict[str, tuple[tuple[int, ...], Any]]] = {}

    def _spec(self, architecture: str) -> dict[str, tuple[tuple[int, ...], Any]]:
        if architecture not in self._reference:
            model = self._build(architecture)
            self._reference[architecture] = {
                k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}
        return self._reference[architecture]

    def check(self, upload: Upload, expected_client: int | None = None) -> str | None:
        """``None`` when the upload is acceptable, else the reason it is rejected."""
        cid = upload.client_id
        if isinstance(cid, bool) or not isinstance(cid, int):
            return f"client id {cid!r} is not an integer"
        if expected_client is not None and cid != expected_client:
            return f"claims to be client {cid} but was sent by client {expected_client}"
        declared = self.architectures.get(cid)
        if declared is None:
            return f"unknown client id {cid!r}"
        if upload.architecture != declared:
            return (f"architecture {upload.architecture!r} differs from the declared "
                    f"{declared!r}")
        n = upload.num_examples
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= self.max_examples:
            return f"absurd example count {n!r} (allowed: 1..{self.max_examples})"
        problems = self._state_problems(upload.small_state, self._spec(declared),
                                        "small-model state")
        if upload.fm_state is not None and len(problems) < MAX_REASONS:
            reference = self._fm_reference()
            if reference is None:
                problems.append("carries a foundation-model part, and the run has none")
            else:
                spec = {k: (tuple(v.shape), v.dtype) for k, v in reference.items()}
                problems += self._state_problems(upload.fm_state, spec, "FM part", "fm:")
        if len(problems) < MAX_REASONS:
            problems += self._payload_problems(upload.payload)
        return "; ".join(problems[:MAX_REASONS]) if problems else None

    @staticmethod
    def _state_problems(state: Any, spec: Mapping[str, tuple[tuple[int, ...], Any]],
                        what: str, prefix: str = "") -> list[str]:
        import torch

        if not isinstance(state, Mapping):
            return [f"{what} is not a mapping of tensors"]
        problems: list[str] = []
        missing = sorted(set(spec) - set(state), key=repr)
        extra = sorted(set(state) - set(spec), key=repr)  # keys of any type
        if missing:
            problems.append(f"missing {prefix and what + ' '}tensors {missing[:MAX_REASONS]}")
        if extra:
            problems.append(f"unexpected {prefix and what + ' '}tensors {extra[:MAX_REASONS]}")
        for key, (shape, dtype) in spec.items():
            value = state.get(key)
            if value is None:
                continue
            name = f"{prefix}{key}"
            if not isinstance(value, torch.Tensor):
                problems.append(f"{name} is a {type(value).__name__}, not a tensor")
            elif tuple(value.shape) != shape:
                problems.append(f"{name} has shape {tuple(value.shape)}, expected {shape}")
            elif value.dtype != dtype:
                problems.append(f"{name} has dtype {value.dtype}, expected {dtype}")
            elif torch.is_floating_point(value) and not bool(torch.isfinite(value).all()):
                problems.append(f"{name} holds non-finite values (NaN or inf)")
            if len(problems) >= MAX_REASONS:
                break
        return problems

    @staticmethod
    def _payload_problems(payload: Any) -> list[str]:
        import torch

        if not isinstance(payload, Mapping):
            return ["payload is not a mapping of tensors"]
        for key, value in payload.items():
            if not isinstance(key, str) or not isinstance(value, torch.Tensor):
                return [f"payload entry {key!r} is not a named tensor"]
            if torch.is_floating_point(value) and not bool(torch.isfinite(value).all()):
                return [f"payload {key} holds non-finite values (NaN or inf)"]
        return []
