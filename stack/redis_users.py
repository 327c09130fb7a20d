"""Redis ACL users of the local stack (make run, docker-compose): workers write, the API reads.

One definition of the rules, used by `make run` (stack/run.py), by the tests and, as the
same words, by docker-compose.yml's Redis (tests/test_compose.py compares them).
"""
from __future__ import annotations

import hashlib
import secrets
from typing import Mapping
from urllib.parse import quote, urlsplit, urlunsplit

WORKER_USER = "worker"
API_USER = "api"
# The workers (and Flower, the CLI) own the data and the control plane; they install the
# read functions (app/store/lua.py). The API runs read commands only, and of scripts only
# those functions, with FCALL_RO: no EVAL, EVALSHA, SCRIPT LOAD or FUNCTION LOAD, so it
# cannot run a script of its own (`while true do end` would stop Redis), and FCALL_RO
# refuses any function without the no-writes flag. A function is also held to this
# command list, command by command. CLUSTER SLOTS/SHARDS and COMMAND let redis-py's
# cluster client find the nodes of a Redis Cluster. SUBSCRIBE to the workers' events lets
# /metrics count the live workers (web/worker_events.py WorkerHeartbeats); it writes nothing.
USER_RULES: dict[str, tuple[str, ...]] = {
    WORKER_USER: ("~*", "&*", "+@all"),
    API_USER: ("resetkeys", "~*", "resetchannels", "&/*.celeryev/worker.*", "-@all", "+@read",
               "-@dangerous", "+@transaction", "+ping", "+info", "+hello", "+select",
               "+fcall_ro", "+cluster|slots", "+cluster|shards", "+command", "+subscribe"),
}


def new_passwords() -> dict[str, str]:
    """A fresh random, URL-safe password for each user."""
    return {user: secrets.token_urlsafe(24) for user in USER_RULES}


def user_args(user: str, secret: str) -> list[str]:
    """`--user` redis-server option of one user; secret is `>password` or `#sha256-hex`."""
    return ["--user", user, "on", secret, *USER_RULES[user]]


def server_args(passwords: Mapping[str, str]) -> list[str]:
    """redis-server options: the default user off, every user on with its password.

    The passwords go in as SHA-256 hashes, so the process list does not show them.
    """
    args = ["--user", "default", "off"]
    for user in USER_RULES:
        args += user_args(user, "#" + hashlib.sha256(passwords[user].encode()).hexdigest())
    return args


def url_for(url: str, user: str, password: str) -> str:
    """url with this user's credentials in place of any it had."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{quote(user, safe='')}:"
                                            f"{quote(password, safe='')}@{host}"))
