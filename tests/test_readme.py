"""The README is the front door: short, two commands to start, links into the site."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from app.settings import Settings, StackSettings, variables

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
    return README.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_readme_is_at_most_150_lines():
    assert len(README.splitlines()) <= 150


def test_quick_start_is_exactly_make_run_and_make_test():
    block = re.search(r"```\n(.*?)```", _section("Quick start"), re.DOTALL).group(1)
    assert block.splitlines() == ["make run", "make test"]


def test_every_link_into_the_docs_is_a_page_of_the_site():
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    pages = set(re.findall(r"[\w-]+\.md", str(nav)))
    linked = set(re.findall(r"\]\(docs/([\w-]+\.md)(?:#[\w-]+)?\)", README))
    assert len(linked) >= 10
    assert sorted(linked - pages) == []
    assert all((ROOT / "docs" / page).is_file() for page in linked)


def test_readme_repeats_no_configuration_table():
    # The configuration page, generated from app/settings.py, is the one table.
    names = {name for cls in (Settings, StackSettings) for name, _ in variables(cls)}
    rows = [line for line in README.splitlines() if line.startswith("|")]
    assert [row for row in rows if set(re.findall(r"`([A-Z][A-Z0-9_]+)`", row)) & names] == []
