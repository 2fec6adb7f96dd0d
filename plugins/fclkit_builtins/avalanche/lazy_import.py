"""Import Avalanche without running its re-export ``__init__`` files until a name is needed.

avalanche-lib's package ``__init__`` files re-export every submodule
(``from .metrics import *``, ...), and ``avalanche/__init__.py`` imports every
package, so importing any module of Avalanche -- even
``avalanche.training.templates`` -- imports all of it: torchmetrics (with
scipy.signal and transformers), wandb, GPUtil, gdown, the classic benchmarks'
dataset downloaders. That is about 3 s here of a default run's start-up for
code a run never calls (see docs/performance.md, "Start-up").

:func:`install` puts a finder for ``avalanche.*`` on ``sys.meta_path``. A package
whose ``__init__`` consists only of re-exports from its own submodules (a
docstring and ``from .x import ...`` statements: all of Avalanche's but two) is
created empty, and each name asked of it is **resolved** on first use: the last
re-export statement that binds the name (the binding a normal import would leave)
is found -- statically first (the submodule's ``__all__`` or top-level names,
from its source), then checked on the imported submodule -- and only that
submodule is imported. Submodules are imported as usual. Anything else
(``from avalanche.x import *``, ``dir()``, a dunder, a name no re-export binds)
runs the whole ``__init__`` in order, as a normal import would, and the package
is an ordinary module from then on. Packages with other code in their
``__init__`` (``avalanche`` itself, whose ``__init__`` also patches
``torch.utils.data.Dataset.__add__``, and ``avalanche.benchmarks.scenarios.deprecated``)
are imported normally, so their side effects happen as usual.

Importing this module installs the finder (the modules of this plugin that import
Avalanche import it first). The modules that run are Avalanche's own, unchanged;
only the modules nobody asks for are not imported. ``FCLKIT_AVALANCHE_EAGER=1``
turns this off (plain imports), and :func:`complete_all` finishes every lazy
package and checks that each name handed out is the object the full ``__init__``
binds (the tests do).
"""

from __future__ import annotations

import ast
import importlib
import importlib.abc
import importlib.machinery
import os
import sys
import threading
import types
import warnings
from pathlib import Path
from typing import Any

#: the package tree this applies to
PREFIX = "avalanche"
#: set to 1 to import Avalanche eagerly, as Avalanche itself does
ENV_EAGER = "FCLKIT_AVALANCHE_EAGER"
_INFO = "__fclkit_lazy__"
_LOCK = threading.RLock()
_MISSING = object()


# ============================================================ static analysis


def _module_file(name: str) -> Path | None:
    """The source file of module ``name`` of the Avalanche tree, found without importing."""
    root = _root()
    if root is None or (name != PREFIX and not name.startswith(PREFIX + ".")):
        return None
    base = root.joinpath(*name.split(".")[1:])
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


_ROOT: list[Path | None] = []


def _root() -> Path | None:
    if not _ROOT:
        spec = importlib.machinery.PathFinder.find_spec(PREFIX)
        _ROOT.append(Path(spec.origin).parent if spec and spec.origin else None)
    return _ROOT[0]


def _absolute(package: str, node: ast.ImportFrom) -> str | None:
    """The absolute module an ``ImportFrom`` in ``package``'s ``__init__`` reads from."""
    if node.level == 0:
        return node.module
    parts = package.split(".")
    if node.level - 1 >= len(parts):
        return None
    base = ".".join(parts[: len(parts) - (node.level - 1)])
    return f"{base}.{node.module}" if node.module else base


_DYNAMIC = {"globals", "exec", "eval", "setattr", "__dict__", "vars", "__import__"}


def _bindings(body: list[ast.stmt], module: str, seen: set[str]) -> set[str] | None:
    """Names the statements may bind at module level (a superset), or None if unknown.

    ``module``: the package that relative imports in ``body`` are relative to."""
    out: set[str] = set()
    for node in body:
        for sub in ast.walk(node):  # code that binds names by other means: give up
            if isinstance(sub, ast.Name) and sub.id in _DYNAMIC:
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    return None
            if isinstance(sub, ast.NamedExpr) and not isinstance(
                    node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                return None
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, ast.Import):
            out.update(a.asname or a.name.partition(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if any(a.name == "*" for a in node.names):
                source = _absolute(module, node) if node.level else node.module
                names = _star_names(source, seen) if source else None
                if names is None:
                    return None
                out.update(names)
            else:
                out.update(a.asname or a.name for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.For,
                               ast.AsyncFor, ast.With, ast.AsyncWith, ast.Delete)):
            targets: list[ast.AST] = []
            if isinstance(node, ast.Assign):
                targets = list(node.targets)
            elif isinstance(node, (ast.AnnAssign, ast.AugAssign, ast.For, ast.AsyncFor)):
                targets = [node.target]
            elif isinstance(node, (ast.With, ast.AsyncWith)):
                targets = [i.optional_vars for i in node.items if i.optional_vars is not None]
            for target in targets:
                out.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
            if isinstance(node, (ast.For, ast.AsyncFor, ast.With, ast.AsyncWith)):
                inner = _bindings(node.body + getattr(node, "orelse", []), module, seen)
                if inner is None:
                    return None
                out |= inner
        elif isinstance(node, (ast.If, ast.While)):
            inner = _bindings(node.body + node.orelse, module, seen)
            if inner is None:
                return None
            out |= inner
        elif isinstance(node, ast.Try) or type(node).__name__ == "TryStar":
            blocks = node.body + node.orelse + node.finalbody  # type: ignore[attr-defined]
            for handler in node.handlers:  # type: ignore[attr-defined]
                blocks = blocks + handler.body
                if handler.name:
                    out.add(handler.name)
            inner = _bindings(blocks, module, seen)
            if inner is None:
                return None
            out |= inner
        elif isinstance(node, ast.Match):
            return None
        # Expr, Pass, Global, Return, Raise, Assert...: bind nothing at module level
    return out


_STAR_CACHE: dict[str, set[str] | None] = {}


def _star_names(module: str, seen: set[str] | None = None) -> set[str] | None:
    """A superset of the names ``from module import *`` binds (None: unknown)."""
    if module in _STAR_CACHE:
        return _STAR_CACHE[module]
    seen = set() if seen is None else seen
    if module in seen:  # a cycle: cannot tell statically
        return None
    seen.add(module)
    path = _module_file(module)
    result: set[str] | None = None
    if path is not None:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        except (OSError, SyntaxError, UnicodeDecodeError):
            tree = None
        if tree is not None:
            result = _all_literal(tree)
            if result is None:
                package = module if path.name == "__init__.py" else module.rpartition(".")[0]
                bound = _bindings(tree.body, package, seen)
                if bound is not None and path.name == "__init__.py":
                    # a package's dict also holds the submodules imported while it ran
                    bound |= {p.stem if p.suffix == ".py" else p.name
                              for p in path.parent.iterdir()
                              if (p.suffix == ".py" and p.name != "__init__.py")
                              or (p / "__init__.py").is_file()}
                result = None if bound is None else {n for n in bound if not n.startswith("_")}
    _STAR_CACHE[module] = result
    return result


_TEXT: dict[str, str | None] = {}


def _star_may_bind(module: str, name: str) -> bool:
    """Whether ``from module import *`` may bind ``name`` (False only when it cannot)."""
    if module not in _TEXT:
        path = _module_file(module)
        try:
            _TEXT[module] = None if path is None else path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            _TEXT[module] = None
    text = _TEXT[module]
    if text is None:
        return True
    if name not in text and "import *" not in text:  # quick: the name is not even there
        return _module_file(f"{module}.{name}") is not None  # (a package's submodule)
    static = _star_names(module)
    return static is None or name in static


def _all_literal(tree: ast.Module) -> set[str] | None:
    """``__all__`` when the module sets it to literal strings (and only so), else None."""
    names: set[str] | None = None
    for node in tree.body:
        targets = (node.targets if isinstance(node, ast.Assign)
                   else [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign))
                   else [])
        if not any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            for sub in ast.walk(node):  # __all__ changed elsewhere (e.g. in an if): unknown
                if isinstance(sub, ast.Name) and sub.id == "__all__" and \
                        isinstance(sub.ctx, ast.Store):
                    return None
            continue
        value = getattr(node, "value", None)
        if not isinstance(value, (ast.List, ast.Tuple)) or not all(
                isinstance(e, ast.Constant) and isinstance(e.value, str) for e in value.elts):
            return None
        items = {e.value for e in value.elts}  # type: ignore[union-attr]
        names = items if isinstance(node, ast.Assign) or names is None else names | items
    return names


# ================================================================ the packages


class _Statement:
    """One re-export statement of a lazy package's ``__init__``."""

    __slots__ = ("code", "source", "names", "star")

    def __init__(self, code: types.CodeType, source: str, node: ast.ImportFrom) -> None:
        self.code = code
        self.source = source
        self.star = any(a.name == "*" for a in node.names)
        #: bound name -> attribute of the source (explicit imports)
        self.names = {} if self.star else {a.asname or a.name: a.name for a in node.names}


class _Info:
    __slots__ = ("statements", "served", "completing")

    def __init__(self, statements: list[_Statement]) -> None:
        self.statements = statements
        self.served: dict[str, Any] = {}
        self.completing = False

    def may_bind(self, name: str) -> bool:
        """Whether a re-export statement may bind ``name``."""
        for st in self.statements:
            if name in st.names:
                return True
            if st.star and _star_may_bind(st.source, name):
                return True
        return False


class LazyPackage(types.ModuleType):
    """An Avalanche package whose re-exports are resolved name by name (see the module doc)."""

    def __getattr__(self, name: str) -> Any:
        return _resolve(self, name)

    def __setattr__(self, name: str, value: Any) -> None:
        # The import system binds every imported submodule in its package. Where a
        # re-export binds that name too (``datasets_from_filelists`` is a function and a
        # module), the full __init__ leaves the re-export: keep the name unbound so that
        # it resolves to that.
        info = self.__dict__.get(_INFO)
        if isinstance(info, _Info) and not info.completing and \
                isinstance(value, types.ModuleType) and \
                value.__name__ == f"{self.__name__}.{name}" and info.may_bind(name):
            return
        super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        _complete(self)
        return list(self.__dict__)


def _is_submodule(pkg: types.ModuleType, name: str) -> bool:
    return _module_file(f"{pkg.__name__}.{name}") is not None


def _provide(pkg: types.ModuleType, info: _Info, name: str) -> tuple[bool, Any]:
    """The final re-export binding of ``name`` in ``pkg``: (found, value)."""
    for st in reversed(info.statements):
        if st.star:
            if name.startswith("_"):
                continue
            if not _star_may_bind(st.source, name):
                continue
            found, value = _exported(importlib.import_module(st.source), name)
            if found:
                return True, value
        elif name in st.names:
            source = importlib.import_module(st.source)
            attr = st.names[name]
            value = getattr(source, attr, _MISSING)
            if value is _MISSING:  # `from pkg import submodule`
                value = importlib.import_module(f"{st.source}.{attr}")
            return True, value
    return False, None


def _exported(module: types.ModuleType, name: str) -> tuple[bool, Any]:
    """Whether ``from module import *`` binds ``name``, and to what."""
    info = module.__dict__.get(_INFO)
    if isinstance(info, _Info):
        with _LOCK:
            if name in module.__dict__:
                return True, module.__dict__[name]
            found, value = _provide(module, info, name)
            if found:
                module.__dict__[name] = value
                info.served[name] = value
                return True, value
            if not _is_submodule(module, name):
                return False, None
            _complete(module)  # would its full __init__ import that submodule? run it
    public = module.__dict__.get("__all__")
    if public is not None:
        return (True, getattr(module, name)) if name in public else (False, None)
    value = module.__dict__.get(name, _MISSING)
    return (False, None) if value is _MISSING or name.startswith("_") else (True, value)


def _resolve(pkg: types.ModuleType, name: str) -> Any:
    with _LOCK:
        d = pkg.__dict__
        if name in d:
            return d[name]
        info = d.get(_INFO)
        if not isinstance(info, _Info):
            raise AttributeError(f"module {pkg.__name__!r} has no attribute {name!r}")
        if not (name.startswith("__") and name.endswith("__")):
            found, value = _provide(pkg, info, name)
            if found:
                d[name] = value
                info.served[name] = value
                return value
            if _is_submodule(pkg, name):
                return importlib.import_module(f"{pkg.__name__}.{name}")
        _complete(pkg)
        try:
            return d[name]
        except KeyError:
            raise AttributeError(f"module {pkg.__name__!r} has no attribute {name!r}") from None


def _complete(pkg: types.ModuleType) -> None:
    """Run the package's whole ``__init__`` in order (a normal import's result)."""
    with _LOCK:
        info = pkg.__dict__.get(_INFO)
        if not isinstance(info, _Info) or info.completing:
            return
        info.completing = True
        for st in info.statements:
            exec(st.code, pkg.__dict__)  # noqa: S102 - Avalanche's own __init__ statements
        del pkg.__dict__[_INFO]
        pkg.__class__ = types.ModuleType
        wrong = [n for n, v in info.served.items() if pkg.__dict__.get(n, _MISSING) is not v]
        if wrong:
            warnings.warn(f"fclkit's lazy import of {pkg.__name__} handed out other objects "
                          f"than its __init__ binds for {', '.join(sorted(wrong))}; set "
                          f"{ENV_EAGER}=1 and report this", RuntimeWarning, stacklevel=2)


# ================================================================ the finder


def _statements(spec: importlib.machinery.ModuleSpec) -> list[_Statement] | None:
    """The re-export statements of a package ``__init__``, or None if it holds other code."""
    path = spec.origin
    if not path or not path.endswith("__init__.py"):
        return None
    try:
        source = Path(path).read_text(encoding="utf-8")
        tree = ast.parse(source, path)
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None
    out: list[_Statement] = []
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # the docstring
        if not isinstance(node, ast.ImportFrom):
            return None
        target = _absolute(spec.name, node)
        if target is None or not target.startswith(spec.name + "."):
            return None  # imports from elsewhere: not a pure re-export package
        code = compile(ast.Module(body=[node], type_ignores=[]), path, "exec")
        out.append(_Statement(code, target, node))
    return out


class _Loader(importlib.abc.Loader):
    def __init__(self, statements: list[_Statement]) -> None:
        self.statements = statements

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return LazyPackage(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        module.__dict__[_INFO] = _Info(self.statements)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any, target: Any = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname != PREFIX and not fullname.startswith(PREFIX + "."):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.submodule_search_locations is None:
            return spec
        statements = _statements(spec)
        if statements is None:
            return spec
        spec.loader = _Loader(statements)
        return spec


_FINDER = _Finder()


def install() -> bool:
    """Import Avalanche's re-export packages lazily from now on (idempotent). False when
    turned off (``FCLKIT_AVALANCHE_EAGER=1``) or when Avalanche was already imported."""
    if os.environ.get(ENV_EAGER, "").strip() not in ("", "0"):
        return False
    if _FINDER in sys.meta_path:
        return True
    if PREFIX in sys.modules:  # already imported the usual way: nothing left to save
        return False
    sys.meta_path.insert(0, _FINDER)
    return True


def lazy_packages() -> list[str]:
    """The Avalanche packages whose ``__init__`` has not run (in full) yet."""
    return sorted(name for name, mod in list(sys.modules.items())
                  if isinstance(mod, LazyPackage) and _INFO in mod.__dict__)


def complete_all() -> list[str]:
    """Run every pending lazy ``__init__`` (deepest first); returns the names handed out
    that differ from what the full ``__init__`` binds (empty when all is well)."""
    wrong: list[str] = []
    while True:
        pending = lazy_packages()
        if not pending:
            return wrong
        name = max(pending, key=lambda n: n.count("."))
        pkg = sys.modules[name]
        info = pkg.__dict__[_INFO]
        served = dict(info.served)
        _complete(pkg)
        wrong += [f"{name}.{n}" for n, v in served.items() if pkg.__dict__.get(n) is not v]


install()
