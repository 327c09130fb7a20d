"""Whether the store takes writes, judged from INFO: what a read-only ACL user may read.

The API's user may not run CONFIG GET, but Redis 7's INFO tells enough: the role, the
memory used against maxmemory, the persistence status and the eviction policy
(`maxmemory_policy` in INFO memory).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import redis
from redis.cluster import RedisCluster

from app.redis_client import connect

# The only policy under which Redis never drops the claims and applied marks that keep
# counting exactly once: any other evicts them under memory pressure (volatile-* first).
REQUIRED_POLICY = "noeviction"
INFO_SECTIONS = ("replication", "memory", "persistence")
# The policy label when the server does not report one (some managed services).
UNKNOWN_POLICY = "unknown"


@dataclass(frozen=True)
class StoreState:
    """One Redis node's writability and memory, from its INFO."""

    problems: tuple[str, ...]
    used_memory: int
    maxmemory: int
    policy: str

    @property
    def writable(self) -> bool:
        """True when nothing found would refuse a write or lose one."""
        return not self.problems

    @property
    def headroom_bytes(self) -> int | None:
        """Bytes left before maxmemory refuses writes (0 when over); None without a limit."""
        return max(self.maxmemory - self.used_memory, 0) if self.maxmemory else None

    @property
    def headroom_ratio(self) -> float | None:
        """Headroom as a share of maxmemory (0 when full); None without a limit."""
        return self.headroom_bytes / self.maxmemory if self.maxmemory else None


def counted_memory(info: Mapping) -> int:
    """used_memory as Redis compares it with maxmemory: without replication and AOF buffers."""
    return max(int(info.get("used_memory", 0)) - int(info.get("mem_not_counted_for_evict", 0)), 0)


def problems(info: Mapping) -> list[str]:
    """What in this INFO makes the node refuse writes, or lose them, each a short reason."""
    found = []
    if info.get("role", "master") != "master":
        found.append(f"read-only: a replica (role {info['role']}) takes no writes")
    if info.get("loading"):
        found.append("loading: the dataset is still loading")
    maxmemory = int(info.get("maxmemory", 0))
    if maxmemory and counted_memory(info) > maxmemory:
        found.append(f"memory full: used_memory {counted_memory(info)} > maxmemory {maxmemory}")
    for status in ("rdb_last_bgsave_status", "aof_last_write_status"):
        if info.get(status, "ok") != "ok":
            found.append(f"persistence failing: {status} {info[status]}")
    policy = info.get("maxmemory_policy")
    if policy is not None and policy != REQUIRED_POLICY:
        found.append(f"eviction policy {policy}: must be {REQUIRED_POLICY}, or claims are "
                     f"evicted and redelivered orders counted twice")
    return found


def assess(info: Mapping) -> StoreState:
    """The state of one node from its INFO (sections replication, memory, persistence)."""
    return StoreState(problems=tuple(problems(info)), used_memory=counted_memory(info),
                      maxmemory=int(info.get("maxmemory", 0)),
                      policy=info.get("maxmemory_policy") or UNKNOWN_POLICY)


def assess_nodes(infos: Mapping[str, Mapping]) -> StoreState:
    """The store's state from each primary's INFO: its problems, named by node when several,
    and the node with the least headroom."""
    states = {node: assess(info) for node, info in infos.items()}
    named = len(states) > 1
    found = tuple(f"{node}: {problem}" if named else problem
                  for node, state in states.items() for problem in state.problems)
    tightest = min(states.values(), key=lambda state: (
        state.headroom_ratio if state.headroom_ratio is not None else float("inf")))
    policies = sorted({state.policy for state in states.values()})
    return StoreState(found, tightest.used_memory, tightest.maxmemory, ",".join(policies))


class StoreHealth:
    """Reads the store's INFO on a client of its own, whose short timeout bounds a check."""

    def __init__(self, client: redis.Redis | RedisCluster):
        self.client = client

    @classmethod
    def from_url(cls, url: str, timeout: float) -> "StoreHealth":
        """One on a new client for the URL whose every call gives up after timeout seconds."""
        return cls(connect(url, decode_responses=True, socket_timeout=timeout,
                           socket_connect_timeout=timeout))

    def infos(self) -> dict[str, dict]:
        """INFO of each primary (one node for a standalone Redis), by node address."""
        if isinstance(self.client, RedisCluster):
            return {node.name: self.client.info(*INFO_SECTIONS, target_nodes=node)
                    for node in self.client.get_primaries()}
        return {"store": self.client.info(*INFO_SECTIONS)}

    def state(self) -> StoreState:
        """The store's state now; raises redis.RedisError when it does not answer in time."""
        return assess_nodes(self.infos())
