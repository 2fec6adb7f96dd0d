"""Errors that fclkit reports to users as one readable line.

Every error a user can cause (bad configuration, unknown component, broken
plugin, bad data) is a :class:`FclkitError`. The CLI prints ``str(error)`` and,
when there is one, the ``hint`` -- the traceback only under ``--debug``.
"""

from __future__ import annotations

from collections.abc import Iterable


class FclkitError(Exception):
    """Base class of every error fclkit reports to a user."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class ConfigError(FclkitError, ValueError):
    """A configuration field holds a value that is not allowed."""

    def __init__(self, field: str, value: object, allowed: str, *, hint: str | None = None):
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"invalid {field} = {value!r}: {allowed}", hint=hint)


class UnknownComponentError(FclkitError, KeyError):
    """A component name (strategy, fusion, model, ...) that no plugin registered."""

    def __init__(self, kind: str, name: str, available: Iterable[str]):
        self.kind = kind
        self.name = name
        import difflib

        self.available = sorted(available)
        shown = self.available if len(self.available) <= self.MAX_LISTED else [
            *self.available[:self.MAX_LISTED - 3],
            f"... ({len(self.available) - self.MAX_LISTED + 3} more)"]
        listed = ", ".join(shown) or "none installed"
        close = difflib.get_close_matches(name, self.available, n=3)
        hint = "`fclkit plugins` lists every installed component and the plugin providing it"
        super().__init__(
            f"unknown {kind} {name!r}; available: {listed}",
            hint=(f"did you mean {' or '.join(map(repr, close))}? " if close else "") + hint,
        )

    #: names listed in the message at most (the rest: `fclkit plugins`)
    MAX_LISTED = 20

    def __str__(self) -> str:  # KeyError would add quotes around the message
        return self.args[0]


class PluginError(FclkitError):
    """A plugin that cannot be loaded or that registers something invalid."""


class DuplicateComponentError(PluginError):
    """Two plugins register a component of the same kind under the same name."""


class IncompatibleComponentsError(FclkitError):
    """Components that cannot work together (e.g. fedavg over different architectures)."""


class BenchmarkUnavailableError(FclkitError):
    """A benchmark whose data cannot be obtained here (for example: no internet)."""


class FclkitDeprecationWarning(FutureWarning):
    """A configuration or API spelling that still works and will go: the message gives the
    new one. (A FutureWarning, so Python shows it by default.)"""
