"""The Lua scripts of app/store/scripts/: loaded once, included pieces inlined, run by SHA.

A script names the pieces it needs with ``--- @include "includes/<name>"`` lines (BullMQ's
convention, taskforcesh/bullmq ``src/commands``), a piece its own the same way, both
relative to scripts/. Each piece is inlined once per script, where first included, so
a piece can count on what its includes define.

The scripts the API runs (READ_SCRIPTS) are Redis Functions instead: one library with the
``no-writes`` flag, installed by the workers' user (install_read_functions: at a worker's
start, and again whenever a worker finds the script cache flushed), called with FCALL_RO.
The API's user may then run these and no script of its own: it has neither EVAL nor
SCRIPT LOAD nor FUNCTION LOAD, and FCALL_RO refuses any function without the flag. The
names carry a digest of the library, so a worker and an API of different releases never
call each other's version.
"""
from __future__ import annotations

import hashlib
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
        # The cache was flushed (a restarted Redis, or SCRIPT FLUSH): the API's functions
        # may be gone with it; only a worker may install them.
        install_read_functions(client)


# The scripts the API runs: installed as Redis Functions, called with FCALL_RO.
READ_SCRIPTS = ("ranked",)


class ReadFunctionsMissing(redis.ResponseError):
    """The store lacks the read functions (a new or flushed store no worker has written to)."""

    def __init__(self):
        super().__init__(
            "the store's read functions are not installed (a new store, or its functions "
            "flushed): a worker installs them at its start and at its next write after a "
            "flush")


@cache
def read_library() -> tuple[str, str]:
    """(the Lua library of READ_SCRIPTS, its version: a digest of their text)."""
    bodies = {name: source(name) for name in READ_SCRIPTS}
    version = hashlib.sha256("\0".join(bodies.values()).encode()).hexdigest()[:12]
    parts = [f"#!lua name=orders_read_{version}"]
    for name, body in bodies.items():
        # The script's own KEYS and ARGV, as a function's arguments.
        parts += [f"local function {name}(KEYS, ARGV)", body, "end",
                  f"redis.register_function{{function_name='{name}_{version}', "
                  f"callback={name}, flags={{'no-writes'}}}}"]
    return "\n".join(parts), version


def install_read_functions(client: redis.Redis) -> None:
    """Install the read functions (on every primary of a cluster); the workers' user only."""
    client.function_load(read_library()[0], replace=True)


class ReadFunction:
    """One of READ_SCRIPTS, called with FCALL_RO.

    A store without the functions gets them from a client whose user may install them (a
    worker, the CLI); the API's user may not: it raises ReadFunctionsMissing.
    """

    def __init__(self, client: redis.Redis, name: str):
        if name not in READ_SCRIPTS:
            raise ValueError(f"{name} is not one of the read functions {READ_SCRIPTS}")
        self.client, self.name = client, f"{name}_{read_library()[1]}"

    def __call__(self, keys: list[str], args: list):
        """FCALL_RO of the function."""
        for attempt in range(2):
            try:
                return self.client.fcall_ro(self.name, len(keys), *keys, *args)
            except redis.ResponseError as exc:
                if attempt or not _missing(exc):
                    raise
            self._install()

    def each(self, calls: list[tuple[list[str], list]]) -> list:
        """The function per (keys, args) call, in one pipeline; the replies in order."""
        for attempt in range(2):
            pipe = self.client.pipeline(transaction=False)
            for keys, args in calls:
                pipe.fcall_ro(self.name, len(keys), *keys, *args)
            replies = pipe.execute(raise_on_error=False)
            errors = [reply for reply in replies if isinstance(reply, Exception)]
            if not errors:
                return replies
            if attempt or not any(map(_missing, errors)):
                raise errors[0]
            self._install()

    def _install(self):
        try:
            install_read_functions(self.client)
        except redis.exceptions.NoPermissionError:
            raise ReadFunctionsMissing() from None


def _missing(exc: Exception) -> bool:
    return isinstance(exc, redis.ResponseError) and "Function not found" in str(exc)
