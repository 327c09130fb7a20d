"""The store's Lua files: each script documents its interface, each piece is inlined once."""
import re

import pytest

from app.store import lua

SCRIPTS = sorted(path.name.removesuffix(".lua") for path in lua.SCRIPTS.iterdir()
                 if path.name.endswith(".lua"))


def test_the_scripts_are_the_ones_the_store_runs():
    assert SCRIPTS == ["apply_batch", "apply_parts", "check_orders", "forget_rejection",
                       "ranked", "write_kpis"]


@pytest.mark.parametrize("name", SCRIPTS)
def test_each_script_opens_with_a_header_naming_keys_argv_and_its_reply(name):
    text = (lua.SCRIPTS / f"{name}.lua").read_text(encoding="utf-8")
    header = []
    for line in text.splitlines():
        if not line.startswith("--") or line.startswith("--- @include"):
            break
        header.append(line)
    assert header[0].startswith(f"-- {name}: "), header[:1]
    for part in ("KEYS", "ARGV", "Returns:"):
        assert any(line.startswith(f"-- {part}") for line in header), (name, part)


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_include_is_inlined_once_and_none_is_left(name):
    source = lua.source(name)
    assert "@include" not in source
    defined = re.findall(r"^local function (\w+)", source, re.MULTILINE)
    assert len(defined) == len(set(defined)), sorted(f for f in defined if defined.count(f) > 1)
    if name.startswith("apply") or name == "check_orders":
        # request.lua is included by the script and again by several pieces.
        assert source.count("local req = cjson.decode(ARGV[1])") == 1


def test_every_include_names_a_piece_and_every_piece_is_included():
    pieces = {path.name for path in (lua.SCRIPTS / "includes").iterdir()}
    named = set()
    for path in lua.SCRIPTS.iterdir():
        if path.name.endswith(".lua"):
            named |= set(lua.INCLUDE.findall(path.read_text(encoding="utf-8")))
    for path in (lua.SCRIPTS / "includes").iterdir():
        named |= set(lua.INCLUDE.findall(path.read_text(encoding="utf-8")))
    assert {f"includes/{piece.removesuffix('.lua')}" for piece in pieces} == named
