"""Docs are generated from, or checked against, the code."""

from pathlib import Path

import pytest

from fclkit import hookspecs
from fclkit.docgen import (
    cli_reference,
    configuration_reference,
    refresh_generated,
    refresh_includes,
)

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_configuration_reference_is_up_to_date():
    assert (DOCS / "configuration.md").read_text() == configuration_reference(), (
        "docs/configuration.md is stale: run `python -m fclkit.docgen`")


def test_cli_reference_is_up_to_date():
    assert (DOCS / "cli.md").read_text() == cli_reference(), (
        "docs/cli.md is stale: run `python -m fclkit.docgen`")


@pytest.mark.parametrize("command", ["run", "plugins", "report", "init"])
def test_cli_reference_has_everything_help_shows(command):
    """Cross-check against the real ``--help`` output, not only the generator."""
    import re

    from typer.testing import CliRunner

    from fclkit.cli import app

    shown = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "250"}).output
    flags = set()
    for line in shown.splitlines():  # option rows: "│ --output  -o  PATH  where to ..."
        m = re.match(r"[│|]?\s+\*?\s*((?:-{1,2}[a-z][a-z-]*\s+)+)", line)
        if m:
            flags |= set(m.group(1).split())
    assert "--help" in flags
    section = (DOCS / "cli.md").read_text().split(f"## `fclkit {command}`")[1].split("\n## ")[0]
    missing = sorted(f for f in flags if f"`{f}`" not in section)
    assert not missing, f"docs/cli.md lacks options that `fclkit {command} --help` shows: {missing}"
    usage = re.search(r"Usage: fclkit \S+ \[OPTIONS\](.*)", shown)
    for argument in (usage.group(1).split() if usage else []):
        assert f"`{argument.strip('[].')}`" in section, argument


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_included_files_are_verbatim(page):
    text = (DOCS / page).read_text()
    assert refresh_includes(text, DOCS.parent) == text, (
        f"docs/{page} quotes a file that changed since: run `python -m fclkit.docgen`")
    assert refresh_generated(text) == text, (
        f"docs/{page} has a generated block that is stale: run `python -m fclkit.docgen`")


def test_the_hooks_table_is_generated_from_the_kinds():
    from fclkit import kinds

    text = (DOCS / "plugins.md").read_text()
    assert "<!-- generated kinds -->" in text
    for kind in kinds.KINDS:
        assert f"| `{kind.hook}(register)` |" in text


def test_plugin_tutorial_quotes_every_file_of_the_example_package():
    package = DOCS.parent / "examples" / "fclkit-plugin-example"
    text = (DOCS / "plugins.md").read_text()
    files = [p for p in package.rglob("*") if p.is_file() and p.suffix in (".py", ".toml")
             and "build" not in p.parts and "egg-info" not in str(p)]
    assert len(files) >= 7
    for path in files:
        assert f"<!-- include {path.relative_to(DOCS.parent)} -->" in text, path


@pytest.mark.parametrize("hook", sorted(hookspecs.REGISTRATION_HOOKS))
def test_every_hook_is_documented_in_plugins_guide(hook):
    assert f"`{hook}(register)`" in (DOCS / "plugins.md").read_text()


def test_every_doc_page_linked_from_readme_exists():
    readme = (DOCS.parent / "README.md").read_text()
    for page in ("quickstart", "configuration", "architecture", "plugins", "method",
                 "results-format", "results", "distributed", "reliability", "bad-inputs",
                 "cli", "performance"):
        assert f"docs/{page}.md" in readme
        assert (DOCS / f"{page}.md").exists()


def _documented_cli_rows():
    import re

    rows = []
    for line in (DOCS / "bad-inputs.md").read_text().splitlines():
        m = re.match(r"\| `fclkit (run [^`]*)` \| `([^`]*)` \|$", line)
        if m:
            rows.append((m.group(1).split(), m.group(2)))
    return rows


@pytest.mark.parametrize("args,expected", _documented_cli_rows(),
                         ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_bad_input_table_matches_the_program(args, expected, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from fclkit.cli import app

    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, [*args, "-q", "--output", str(tmp_path)]
                             if "--resume" not in args else args)
    assert res.exit_code == 1, res.output
    assert expected in " ".join(res.output.split())


def test_bad_input_table_has_the_cli_rows():
    assert len(_documented_cli_rows()) >= 20


def test_every_flag_the_docs_use_exists():
    import re

    from typer.testing import CliRunner

    from fclkit.cli import app

    help_text = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "200"}).output
    pages = [*DOCS.glob("*.md"), DOCS.parent / "README.md", DOCS.parent / "CONTRIBUTING.md"]
    used = set()
    for page in pages:
        for command in re.findall(r"fclkit run[^`|\n]*", page.read_text()):
            used |= set(re.findall(r"--[a-z][a-z-]+", command))
    missing = sorted(flag for flag in used if flag not in help_text)
    assert not missing, f"docs use flags that `fclkit run` does not have: {missing}"
