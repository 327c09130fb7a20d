"""The README's configuration section names every environment variable the project reads."""
from __future__ import annotations

import re
from pathlib import Path

from app.settings import Settings, StackSettings, variables

ROOT = Path(__file__).resolve().parents[1]


def _configuration_section() -> str:
    text = (ROOT / "README.md").read_text()
    return text.split("\n## Configuration", 1)[1].split("\n## ", 1)[0]


def test_every_setting_and_bench_variable_is_in_the_configuration_tables():
    section = _configuration_section()
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", section))
    settings = {name for cls in (Settings, StackSettings) for name, _ in variables(cls)}
    bench = {name for path in (ROOT / "bench").glob("*.py")
             for name in re.findall(r"\bBENCH_[A-Z_]+\b", path.read_text())}
    assert bench, "bench/ reads no BENCH_* variable: the pattern is wrong"
    assert sorted((settings | bench) - documented) == []
