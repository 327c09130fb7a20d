"""Connections to Redis: a standalone server or a Redis Cluster, told apart by asking it."""
from __future__ import annotations

import redis
from redis.cluster import RedisCluster

from app.settings import Settings


def is_cluster(url: str) -> bool:
    """Whether the Redis at url runs in cluster mode (INFO cluster: cluster_enabled)."""
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
        raise ValueError(f"CONTROL_URL {settings.control_plane_url!r} is a Redis Cluster node; "
                         "it must name a standalone Redis (kombu's Redis transport does not "
                         "speak cluster mode)")
