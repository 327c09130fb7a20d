"""The Lua scripts of app/store/scripts/: loaded once, included pieces inlined, run by SHA.

A script names the pieces it needs with ``--- @include "includes/<name>"`` lines (BullMQ's
convention, taskforcesh/bullmq ``src/commands``), a piece its own the same way, both
relative to scripts/. Each piece is inlined once per script, where first included, so
a piece can count on what its includes define.
"""
from __future__ import annotations

import re
from functools import cache
from importlib.resources import files

import redis

INCLUDE = re.compile(r'^--- @include "([^"]+)"\s*$', re.MULTILINE)
SCRIPTS = files("app.store") / "scripts"


@cache
def source(name: str) -> str:
    """The text of scripts/<name>.lua with its includes inlined, each once."""
    return _inline(name, set())


def _inline(name: str, done: set[str]) -> str:
    def include(match: re.Match) -> str:
        piece = match.group(1)
        if piece in done:
            return ""
        done.add(piece)
        return _inline(piece, done)

    return INCLUDE.sub(include, (SCRIPTS / f"{name}.lua").read_text(encoding="utf-8"))


def register(client: redis.Redis, name: str):
    """redis-py's Script object for scripts/<name>.lua (its SHA computed here, no call)."""
    return client.register_script(source(name))


def evalsha_each(client: redis.Redis, script, calls: list[tuple[list[str], list]],
                 *after: tuple) -> list:
    """EVALSHA of script per (keys, args) call, then the after commands, in one pipeline.

    The replies in order, errors in their place. A NoScriptError (a new or restarted Redis:
    no call ran) loads the script and sends the pipeline once more.
    """
    # EVALSHA itself: a registered script in a pipeline costs a SCRIPT EXISTS round trip.
    for attempt in range(2):
        pipe = client.pipeline(transaction=False)
        for keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        for command in after:
            pipe.execute_command(*command)
        replies = pipe.execute(raise_on_error=False)
        if attempt or not any(isinstance(r, redis.exceptions.NoScriptError) for r in replies):
            return replies
        client.script_load(script.script)
