"""The built site: every page of the nav, and the reference pages against the code."""
from __future__ import annotations

import json
import re
from dataclasses import fields
from html.parser import HTMLParser
from pathlib import Path

import yaml

from app.settings import Settings, StackSettings
from web import create_app

ROOT = Path(__file__).resolve().parents[2]


class _Tables(HTMLParser):
    """The text of every table cell of a page, row by row."""

    def __init__(self):
        super().__init__()
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _rows(page: Path) -> dict[str, list[str]]:
    parser = _Tables()
    parser.feed(page.read_text())
    return {row[0]: row[1:] for row in parser.rows if row}


def _nav_pages(nav) -> list[str]:
    pages = []
    for entry in nav:
        for value in entry.values():
            pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def test_every_page_of_the_nav_is_built(site):
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    pages = _nav_pages(config["nav"])
    assert len(pages) >= 12
    for page in pages:
        html = site / ("index.html" if page == "index.md" else f"{page[:-3]}/index.html")
        assert html.is_file(), page
        assert "<h1" in html.read_text(), f"{page} has no title"


def test_configuration_page_shows_every_setting_as_in_app_settings(site):
    rows = _rows(site / "configuration" / "index.html")
    for cls in (Settings, StackSettings):
        for field in fields(cls):
            name = field.name.upper()
            assert name in rows, f"{name} is not on the configuration page"
            kind, default, doc = rows[name]
            assert kind == type(field.default).__name__, name
            assert default == (str(field.default) if field.default != "" else "(empty)"), name
            assert doc == field.metadata["doc"].replace("`", ""), name


def test_configuration_page_names_every_bench_variable(site):
    text = (site / "configuration" / "index.html").read_text()
    documented = set(re.findall(r"<code>([A-Z][A-Z0-9_]+)</code>", text))
    bench = {name for path in (ROOT / "bench").glob("*.py")
             for name in re.findall(r"\bBENCH_[A-Z_]+\b", path.read_text())}
    assert bench, "bench/ reads no BENCH_* variable: the pattern is wrong"
    assert sorted(bench - documented) == []


def test_api_page_shows_every_operation_of_the_openapi_document(site):
    spec = create_app(Settings()).test_client().get("/openapi.json").get_json()
    assert json.loads((site / "openapi.json").read_text()) == spec
    text = (site / "api" / "index.html").read_text()
    operations = [(method.upper(), path) for path, ops in spec["paths"].items()
                  for method in ops if method != "parameters"]
    assert len(operations) >= 15
    for method, path in operations:
        assert f"{method} <code>{path}</code>" in text, (method, path)
