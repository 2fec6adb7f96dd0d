"""The shape of the code: no import cycle, a core that names no built-in plugin, and the
component kinds declared once (a new kind is one row of ``fclkit.kinds.KINDS``)."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"fclkit": ROOT / "fclkit", "fclkit_builtins": ROOT / "plugins" / "fclkit_builtins"}


def _modules() -> dict[str, Path]:
    out = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports, at module level or inside functions (not the
    imports under ``if TYPE_CHECKING:``, which never run)."""
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            module = (f"{base}.{node.module}" if node.module else base) if node.level \
                else node.module or ""
            subs = [f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in modules]
            targets = subs if len(subs) == len(node.names) else [module, *subs]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_has_no_cycle():
    graph = _graph()
    assert len(graph) > 60  # the walk found the project
    assert _cycles(graph) == []


def test_the_core_names_no_builtin_plugin():
    """The core finds built-ins through the entry-point group, like third-party plugins."""
    for name, deps in _graph().items():
        if name == "fclkit" or name.startswith("fclkit."):
            assert not [d for d in deps if d.startswith("fclkit_builtins")], name
    for path in PACKAGES["fclkit"].rglob("*.py"):
        assert "fclkit_builtins" not in path.read_text(), path


def test_a_cycle_is_found():  # the check above can fail
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


NEW_KIND = '''

class Augmentation(Component):
    """How training inputs are augmented (a kind added by a test)."""


KINDS = (*KINDS, ComponentKind(
    "augmentation", Augmentation, "register_augmentations", "augmentation", "augmentation_options",
    "none", "how training inputs are augmented ('none': not at all)",
    optional=True))
'''

USE_IT = textwrap.dedent('''
    import json, sys
    from pathlib import Path

    import attrs
    from typer.testing import CliRunner

    import fclkit
    import fclkit.cli
    from fclkit import kinds
    from fclkit.config import ExperimentConfig, commented_toml, setting
    from fclkit.docgen import cli_reference, configuration_reference, kinds_table
    assert fclkit.__file__.startswith(sys.argv[1]), fclkit.__file__  # the copy with the row

    class Rotated(kinds.Augmentation):
        name = "rotated"
        description = "inputs rotated at random"

        @attrs.frozen
        class Options:
            angle: float = setting(15.0, "largest rotation, in degrees")

    class Plugin:
        @staticmethod
        @fclkit.hookimpl
        def register_augmentations(register):
            register(Rotated)

    import fclkit.plugins
    build = fclkit.plugins.build_registry
    fclkit.plugins.build_registry = lambda extra_plugins=(), **k: build(
        extra_plugins=[*extra_plugins, Plugin], **k)

    listing = CliRunner().invoke(fclkit.cli.app, ["plugins", "--options"],
                                 env={"COLUMNS": "200"}).output
    assert "augmentation" in listing and "rotated" in listing and "angle" in listing, listing
    help_text = CliRunner().invoke(fclkit.cli.app, ["run", "--help"],
                                   env={"COLUMNS": "200"}).output
    assert "--augmentation " in help_text and "--augmentation-opt" in help_text, help_text
    assert "augmentation = " in commented_toml()
    assert "`augmentation`" in configuration_reference()
    assert "`[augmentation_options]`" in configuration_reference()
    assert "`--augmentation-opt`" in cli_reference()
    assert "`register_augmentations(register)`" in kinds_table()

    out = Path(sys.argv[2])
    result = CliRunner().invoke(fclkit.cli.app, [
        "run", "--augmentation", "rotated", "--augmentation-opt", "angle=30", "--fusion", "fedavg",
        "--clients", "2", "--tasks", "2", "--rounds", "1", "--epochs", "1", "--loggers",
        "none", "-q", "--output", str(out), "--name", "r"])
    assert result.exit_code == 0, (result.output, result.exception)
    components = json.loads((out / "r" / "run.json").read_text())["components"]
    augmentation = [c for c in components if c["kind"] == "augmentation"]
    assert augmentation == [{**augmentation[0], "name": "rotated", "options": {"angle": 30.0}}]
    config = fclkit.load_config(out / "r" / "config.toml")
    assert config.augmentation == "rotated" and config.augmentation_options == {"angle": 30}
    print("ok")
''')


def test_a_new_component_kind_is_one_row_of_the_kinds_table(tmp_path):
    """Add one row to a copy of fclkit/kinds.py: the new kind has a hook, a config field and
    table, CLI flags, a row in `fclkit plugins`, the generated docs and run.json."""
    copy = tmp_path / "src"
    shutil.copytree(PACKAGES["fclkit"], copy / "fclkit",
                    ignore=shutil.ignore_patterns("__pycache__"))
    kinds_py = copy / "fclkit" / "kinds.py"
    kinds_py.write_text(kinds_py.read_text() + NEW_KIND)
    script = tmp_path / "use_it.py"
    script.write_text(USE_IT)
    env = {**os.environ, "PYTHONPATH": str(copy), "FCLKIT_LOAD_PLUGINS": ""}
    done = subprocess.run([sys.executable, str(script), str(copy), str(tmp_path / "runs")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.stdout.strip().endswith("ok"), done.stdout + done.stderr
