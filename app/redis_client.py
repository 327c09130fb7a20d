"""Connections to Redis: a standalone server or a Redis Cluster, told apart by asking it."""
from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.cluster import RedisCluster

from app.display import error_text
from app.settings import Settings


logger = logging.getLogger(__name__)


def is_cluster(url: str) -> bool:
    """Whether the Redis at url runs in cluster mode (INFO cluster: cluster_enabled)."""
    # Asked on database 0: a cluster node refuses SELECT, so a URL naming another database
    # (a control plane derived from REDIS_URL) would fail to ask instead of being told.
    parts = urlsplit(url)
    if parts.scheme in ("redis", "rediss"):
        url = urlunsplit(parts._replace(path=""))
    with redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5) as client:
        return bool(client.info("cluster").get("cluster_enabled"))


def connect(url: str, **options) -> redis.Redis | RedisCluster:
    """A client for url: redis-py's RedisCluster when it names a cluster node, else Redis."""
    try:
        cluster = is_cluster(url)
    except redis.ConnectionError:
        # Not up yet: a standalone client, which reports Redis as down until it answers
        # (a process started before its cluster must be restarted to use it).
        cluster = False
    if cluster:
        # A cluster has only database 0; the client finds every node from this one.
        return RedisCluster.from_url(url, **options)
    return redis.Redis.from_url(url, **options)


def check_control_plane(settings: Settings) -> None:
    """Refuse a control plane that cannot work: kombu's Redis transport speaks no cluster."""
    if is_cluster(settings.redis_url) and not settings.control_url:
        raise ValueError("REDIS_URL names a Redis Cluster, so CONTROL_URL must name a standalone "
                         "Redis for worker events and remote control (kombu's Redis transport "
                         "does not speak cluster mode)")
    if is_cluster(settings.control_plane_url):
        given = ("CONTROL_URL" if settings.control_url
                 else "the control plane (derived from REDIS_URL)")
        raise ValueError(f"{given} {without_password(settings.control_plane_url)!r} is a Redis "
                         "Cluster node; it must name a standalone Redis (kombu's Redis transport "
                         "does not speak cluster mode)")


def without_password(url: str) -> str:
    """A URL with its password, if any, shown as ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def eviction_policies(url: str) -> dict[str, str | None]:
    """maxmemory-policy of every node of the store at url; None where it is not told.

    Managed services may refuse CONFIG or answer it empty (sidekiq/sidekiq#5712).
    """
    client = connect(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        if isinstance(client, RedisCluster):
            nodes = [(node.name, client.get_redis_connection(node)) for node in client.get_nodes()]
        else:
            nodes = [(urlsplit(url).netloc.rpartition("@")[2], client)]
        policies = {}
        for name, node in nodes:
            try:
                policies[name] = node.config_get("maxmemory-policy").get("maxmemory-policy") or None
            except redis.ResponseError:  # CONFIG renamed, forbidden, or unknown
                policies[name] = None
        return policies
    finally:
        client.close()


class EvictingStore(ValueError):
    """The store may evict keys: claims and applied marks would go, orders count twice."""


def check_eviction_policy(settings: Settings) -> None:
    """Refuse a store whose maxmemory-policy is not noeviction; warn when it is not told.

    Claims, applied marks and rejection records carry TTLs: volatile-* and allkeys-*
    policies evict them first under memory pressure, and a redelivered order is counted
    again. Unknown policies raise too with REQUIRE_NOEVICTION.
    """
    policies = eviction_policies(settings.redis_url)
    evicting = {node: policy for node, policy in policies.items()
                if policy is not None and policy != "noeviction"}
    if evicting:
        shown = ", ".join(f"{policy} on {node}" for node, policy in sorted(evicting.items()))
        raise EvictingStore(
            f"the store's maxmemory-policy is {shown}: it must be noeviction, or Redis evicts "
            "the claims that keep orders from being counted twice (set maxmemory-policy "
            "noeviction: CONFIG SET / redis.conf, or the parameter group's maxmemory-policy "
            "on ElastiCache and MemoryDB)")
    unknown = sorted(node for node, policy in policies.items() if policy is None)
    if not unknown:
        return
    message = (f"the store does not tell its maxmemory-policy ({', '.join(unknown)}: CONFIG GET "
               "refused or empty, as on some managed services); it must be noeviction, or "
               "orders may be counted twice")
    if settings.require_noeviction:
        raise EvictingStore(f"{message} (REQUIRE_NOEVICTION is set: set it to false to start "
                            "on a store that does not tell)")
    logger.warning("%s; starting all the same (REQUIRE_NOEVICTION=true refuses to)", message)


# Error codes with which a Redis that is up refuses writes: maxmemory reached under
# noeviction, a replica (or a demoted primary), persistence failing, a script running,
# an ACL that forbids, a cluster without a quorum or a primary. A fault of the store,
# not of the data: the worker holds off instead of failing the orders.
WRITE_REFUSALS = ("OOM", "READONLY", "MISCONF", "BUSY", "NOPERM", "CLUSTERDOWN", "MASTERDOWN",
                  "NOREPLICAS")
_REFUSAL = re.compile(r"(?:^|: )(" + "|".join(WRITE_REFUSALS) + r")\b")
_REFUSAL_CLASSES = ((redis.exceptions.OutOfMemoryError, "OOM"),
                    (redis.exceptions.ReadOnlyError, "READONLY"),
                    (redis.exceptions.NoPermissionError, "NOPERM"),
                    (redis.exceptions.MasterDownError, "MASTERDOWN"),
                    (redis.exceptions.ClusterDownError, "CLUSTERDOWN"))


def write_refusal(exc: BaseException) -> str | None:
    """The error code (OOM, READONLY, ...) when exc is Redis refusing writes; else None."""
    if not isinstance(exc, redis.ResponseError):
        return None
    # redis-py strips the codes it maps to classes of their own.
    for kind, code in _REFUSAL_CLASSES:
        if isinstance(exc, kind):
            return code
    # Unmapped codes (BUSY, MISCONF) stay in the text, after a pipeline's or script's prefix.
    match = _REFUSAL.search(str(exc))
    return match.group(1) if match else None


def refused_write(client: redis.Redis | RedisCluster, key: str) -> str | None:
    """Try one small write to key: None if it went through, else why not (a code, or the error)."""
    try:
        client.set(key, "1", px=60_000)
    except redis.RedisError as exc:
        return write_refusal(exc) or error_text(exc)
    return None
