"""The plugin manager and the registry of components it fills.

Every plugin -- fclkit's built-ins included -- is found through the
``fclkit`` entry-point group and registered the same way. A fresh manager is
built per run (and per test): nothing is loaded at import time.

``FCLKIT_LOAD_PLUGINS`` limits third-party plugins (built-ins of the ``fclkit``
distribution always load):

* unset: every installed plugin loads;
* empty string: no third-party plugin loads;
* ``"fclkit-plugin-x,other"``: only these distributions (or entry-point names) load.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from importlib import metadata
from typing import Any

import attrs
import pluggy

from . import hookspecs, kinds
from .errors import DuplicateComponentError, PluginError, UnknownComponentError
from .interfaces import Component

ENTRY_POINT_GROUP = "fclkit"
LOAD_PLUGINS_ENV = "FCLKIT_LOAD_PLUGINS"
HOST_DISTRIBUTION = "fclkit"
_NAME_RE = re.compile(r"^[a-z][a-z0-9_\-]*$")


@attrs.frozen
class Registered:
    """A component class and where it came from."""

    kind: str
    name: str
    cls: Any  # a Component subclass of the kind's interface
    plugin: str
    distribution: str | None
    version: str | None


@attrs.frozen
class BrokenPlugin:
    """A plugin that could not be loaded, and why."""

    plugin: str
    distribution: str | None
    error: str


@attrs.define
class Registry:
    """Components by kind and name, plus the plugins that failed to load."""

    components: dict[str, dict[str, Registered]] = attrs.field(
        factory=lambda: {kind.name: {} for kind in kinds.KINDS}
    )
    broken: list[BrokenPlugin] = attrs.field(factory=list)
    plugins: dict[str, str | None] = attrs.field(factory=dict)  # plugin -> version

    def add(self, cls: type, *, plugin: str, distribution: str | None = None,
            version: str | None = None, expected_kind: str | None = None) -> Registered:
        """Validate and add ``cls``; refuse wrong types, bad names and duplicates."""
        kind = _kind_of(cls, plugin)
        if expected_kind is not None and kind != expected_kind:
            hook = {k.name: k.hook for k in kinds.KINDS}
            raise PluginError(
                f"plugin {plugin!r} registers {cls.__qualname__} (a {kind.replace('_', ' ')}) "
                f"through {hook[expected_kind]}; register it through {hook[kind]}")
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise PluginError(
                f"plugin {plugin!r} registers {cls.__qualname__} with invalid name {name!r}",
                hint="a component needs a class attribute `name`: lowercase letters, "
                "digits, '-' or '_', starting with a letter",
            )
        existing = self.components[kind].get(name)
        if existing is not None and existing.cls is not cls:
            raise DuplicateComponentError(
                f"{kind} {name!r} is registered twice: by plugin {existing.plugin!r} "
                f"({existing.cls.__module__}.{existing.cls.__qualname__}) and by plugin "
                f"{plugin!r} ({cls.__module__}.{cls.__qualname__})",
                hint="uninstall one of the two plugins, or rename one component",
            )
        entry = Registered(kind, name, cls, plugin, distribution, version)
        self.components[kind][name] = entry
        return entry

    def get(self, kind: str, name: str) -> Registered:
        """The component ``name`` of ``kind``, or an error listing what is available."""
        try:
            return self.components[kind][name]
        except KeyError:
            raise UnknownComponentError(
                kind.replace("_", " "), name, self.components[kind]
            ) from None

    def names(self, kind: str) -> list[str]:
        return sorted(self.components[kind])

    def all(self) -> Iterable[Registered]:
        for kind in self.components:
            yield from (self.components[kind][n] for n in sorted(self.components[kind]))


def _kind_of(cls: Any, plugin: str) -> str:
    if isinstance(cls, type):
        for kind in kinds.KINDS:
            if issubclass(cls, kind.interface):
                return kind.name
    bases = ", ".join(k.interface.__name__ for k in kinds.KINDS)
    raise PluginError(
        f"plugin {plugin!r} registers {cls!r}, which is not a subclass of one of: {bases}",
    )


def _allowed_third_party() -> set[str] | None:
    """None: everything; otherwise the allow-listed distribution / entry-point names."""
    value = os.environ.get(LOAD_PLUGINS_ENV)
    if value is None:
        return None
    return {part.strip().lower() for part in value.split(",") if part.strip()}


def _canonical(name: str | None) -> str:
    return re.sub(r"[-_.]+", "-", name or "").lower()


def new_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs.specs())
    return pm


def build_registry(
    extra_plugins: Iterable[Any] = (),
    *,
    load_entry_points: bool = True,
) -> Registry:
    """Load plugins and collect every component they register.

    :param extra_plugins: plugin objects/modules to register besides the entry
        points (e.g. a test plugin, or research code's own module).
    :param load_entry_points: False to load nothing from the ``fclkit`` group.
    """
    pm = new_plugin_manager()
    registry = Registry()
    sources: list[tuple[Any, str, str | None, str | None]] = []

    if load_entry_points:
        allowed = _allowed_third_party()
        # entry_points(group=...) reads only entry_points.txt files; the METADATA of a
        # distribution is parsed only when it has an fclkit entry point
        found = []
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist
            dist_name = dist.metadata["Name"] if dist is not None else ep.module
            found.append((_canonical(dist_name) != HOST_DISTRIBUTION, _canonical(dist_name),
                          ep.name, dist_name, ep, dist))
        seen: set[tuple[str, str]] = set()
        for _, _, _, dist_name, ep, dist in sorted(found, key=lambda f: f[:3]):
            if (dist_name, ep.name) in seen:
                continue
            seen.add((dist_name, ep.name))
            builtin = _canonical(dist_name) == HOST_DISTRIBUTION
            if not builtin and allowed is not None and not (
                _canonical(dist_name) in {_canonical(a) for a in allowed}
                or ep.name.lower() in allowed
            ):
                continue
            try:
                module = ep.load()
            except Exception as exc:  # a broken plugin must not take the host down
                registry.broken.append(BrokenPlugin(
                    ep.name, dist_name, f"import failed: {type(exc).__name__}: {exc}"))
                continue
            sources.append((module, ep.name, dist_name,
                            dist.version if dist is not None else None))

    for obj in extra_plugins:
        sources.append((obj, getattr(obj, "__name__", None) or type(obj).__name__, None, None))

    for obj, name, source_dist, version in sources:
        if pm.is_registered(obj) or pm.has_plugin(name):
            continue
        try:
            pm.register(obj, name=name)
            pm.check_pending()
        except pluggy.PluginValidationError as exc:
            if pm.is_registered(obj):
                pm.unregister(obj)
            registry.broken.append(BrokenPlugin(name, source_dist, _explain_validation(exc)))
            continue
        registry.plugins[name] = version
        for hook_name, kind in hookspecs.registration_hooks().items():
            impls = [i for i in getattr(pm.hook, hook_name).get_hookimpls() if i.plugin is obj]
            for impl in impls:
                collected: list[type] = []
                try:
                    impl.function(register=collected.append)
                except Exception as exc:
                    registry.broken.append(BrokenPlugin(
                        name, source_dist, f"{hook_name} raised {type(exc).__name__}: {exc}"))
                    continue
                for cls in collected:
                    try:
                        registry.add(cls, plugin=name, distribution=source_dist, version=version,
                                     expected_kind=kind)
                    except PluginError as exc:  # refused: reported by name, rest keeps working
                        registry.broken.append(BrokenPlugin(name, source_dist, str(exc)))
    return registry


def _explain_validation(exc: pluggy.PluginValidationError) -> str:
    known = ", ".join(hookspecs.registration_hooks())
    return f"{exc} (fclkit hooks are: {known})"


def components_from_classes(registry: Registry, classes: Iterable[type],
                            plugin: str = "python-api") -> None:
    """Register component classes given directly by research code (no packaging)."""
    for cls in classes:
        if not isinstance(cls, type) or not issubclass(cls, Component):
            raise PluginError(f"{cls!r} is not a fclkit component class")
        registry.add(cls, plugin=plugin)
