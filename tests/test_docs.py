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
                 "results-format"):
        assert f"docs/{page}.md" in readme
        assert (DOCS / f"{page}.md").exists()
