"""Docs are generated from, or checked against, the code."""

from pathlib import Path

import pytest

from fclkit import hookspecs
from fclkit.docgen import configuration_reference

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_configuration_reference_is_up_to_date():
    assert (DOCS / "configuration.md").read_text() == configuration_reference(), (
        "docs/configuration.md is stale: run `python -m fclkit.docgen`")


@pytest.mark.parametrize("hook", sorted(hookspecs.REGISTRATION_HOOKS))
def test_every_hook_is_documented_in_plugins_guide(hook):
    assert f"`{hook}(register)`" in (DOCS / "plugins.md").read_text()


def test_every_doc_page_linked_from_readme_exists():
    readme = (DOCS.parent / "README.md").read_text()
    for page in ("quickstart", "configuration", "architecture", "plugins", "method",
                 "results-format", "results", "distributed", "reliability", "bad-inputs"):
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
