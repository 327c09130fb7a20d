"""A local Redis Cluster from Debian's redis-server: primaries (and replicas) on loopback ports.

`REDIS_CLUSTER=3 make run` and the tests' session fixture start the same cluster: one
redis-server per node with cluster mode on, joined by `redis-cli --cluster create`, the tool
Redis ships for it. Slots are spread evenly; with replicas, each primary gets its own.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Collection

import redis
from redis.cluster import RedisCluster

from stack.services import RedisServer, ServiceError, free_port, wait_for

# Seconds without an answer before the cluster fails a primary over to its replica.
NODE_TIMEOUT_MS = 3000
SLOTS = 16384
# Each node also listens on its port + 10000, the cluster bus.
BUS_OFFSET = 10000


def free_node_ports(count: int = 1, taken: Collection[int] = ()) -> int:
    """The first of count consecutive free ports whose cluster-bus ports are free too."""
    return free_port(count, also_free_at=BUS_OFFSET, taken=taken)


def find_redis_cli() -> str:
    """Path of redis-cli (Debian's redis-tools, which redis-server depends on)."""
    found = shutil.which("redis-cli") or "/usr/bin/redis-cli"
    if not Path(found).exists():
        raise ServiceError("redis-cli not found (install it: apt-get install redis-server)")
    return found


class LocalRedisCluster:
    """`primaries` redis-server primaries with `replicas` replicas each, as one cluster."""

    def __init__(self, primaries: int = 3, replicas: int = 0, ports: list[int] | None = None,
                 log_dir: Path | str | None = None, server_args: list[str] = (),
                 admin: tuple[str, str] | None = None):
        if primaries < 3:
            raise ValueError("a Redis Cluster needs at least 3 primaries")
        count = primaries * (1 + replicas)
        if not ports:
            first = free_node_ports(count)
            ports = range(first, first + count)
        self.ports = list(ports)
        if len(self.ports) != count:
            raise ValueError(f"{primaries} primaries with {replicas} replicas need {count} ports")
        self.primaries, self.replicas = primaries, replicas
        # admin: (user, password) that joins the nodes and that replicas sync with, when
        # server_args turn the default user off (stack/redis_users.py's ACL users).
        self.admin = admin
        self.log_dir, self.server_args = log_dir, list(server_args)
        self.nodes = [self._node(port) for port in self.ports]

    def _node(self, port: int) -> RedisServer:
        return RedisServer(port, log_dir=self.log_dir, name=f"redis-cluster-{port}",
                           extra_args=["--cluster-enabled", "yes",
                                       "--cluster-config-file", f"nodes-{port}.conf",
                                       "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                                       *self.server_args])

    def _credentials(self) -> dict[str, str]:
        """redis-py keyword arguments of the admin user, if any."""
        return {"username": self.admin[0], "password": self.admin[1]} if self.admin else {}

    @property
    def url(self) -> str:
        """redis:// URL of the first node; a cluster client discovers the others from it."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self, timeout: float = 60.0) -> "LocalRedisCluster":
        """Start every node, join them into one cluster and wait until it serves all slots."""
        try:
            for node in self.nodes:
                node.start()
                self._let_replicas_sync(node.port)
            self._redis_cli("--cluster", "create", *(f"127.0.0.1:{port}" for port in self.ports),
                            "--cluster-replicas", str(self.replicas), "--cluster-yes",
                            timeout=timeout)
            self._wait_ready(timeout)
        except (subprocess.SubprocessError, ServiceError) as exc:
            self.stop()
            detail = getattr(exc, "stdout", "") or ""
            raise ServiceError(f"the local Redis Cluster did not form: {exc}\n{detail}") from exc
        return self

    def add_replica(self, primary_port: int, timeout: float = 60.0) -> RedisServer:
        """Start a new node and make it a replica of the primary on primary_port.

        What an operator (or a managed service) does after a failover, so the promoted
        primary has a replica again and WAIT can be satisfied.
        """
        node = self._node(free_node_ports(taken=self.ports))
        self.nodes.append(node)
        self.ports.append(node.port)
        node.start()
        self._let_replicas_sync(node.port)
        with redis.Redis(port=primary_port, decode_responses=True, **self._credentials()) as primary:
            primary_id = primary.cluster("MYID")
        self._redis_cli("--cluster", "add-node", f"127.0.0.1:{node.port}",
                        f"127.0.0.1:{primary_port}", "--cluster-slave", "--cluster-master-id",
                        primary_id, timeout=timeout)
        self._wait_ready(timeout)
        return node

    def _redis_cli(self, *args: str, timeout: float):
        # The password travels in the environment, so the process list does not show it.
        login = ["--user", self.admin[0]] if self.admin else []
        env = {**os.environ, "REDISCLI_AUTH": self.admin[1]} if self.admin else None
        subprocess.run([find_redis_cli(), *login, *args], check=True, capture_output=True,
                       text=True, timeout=timeout, env=env)

    def _let_replicas_sync(self, port: int):
        # Set at run time rather than on the command line, where ps would show the password.
        if self.admin:
            with redis.Redis(port=port, **self._credentials()) as node:
                node.config_set("masteruser", self.admin[0])
                node.config_set("masterauth", self.admin[1])

    def _wait_ready(self, timeout: float):
        try:
            # Nodes killed on purpose (a failover test's) stay known to the others, failed.
            live = [node.port for node in self.nodes if node.process and node.process.running]
            wait_for(lambda: all(self._node_ready(port) for port in live), timeout,
                     interval=0.2, message=f"the cluster on ports {self.ports} to serve all slots")
        except TimeoutError as exc:
            raise ServiceError(str(exc)) from None

    def _node_ready(self, port: int) -> bool:
        # Every node must agree: all slots served and every node known, replicas synced.
        try:
            with redis.Redis(port=port, socket_timeout=1, **self._credentials()) as node:
                info = node.cluster("INFO")
                synced = node.info("replication").get("master_link_status", "up") == "up"
        except redis.RedisError:
            return False
        return (info.get("cluster_state") == "ok"
                and int(info.get("cluster_slots_assigned", 0)) == SLOTS
                and int(info.get("cluster_known_nodes", 0)) == len(self.ports) and synced)

    def client(self, **options) -> RedisCluster:
        """A cluster client on this cluster."""
        return RedisCluster.from_url(self.url, **{**self._credentials(), **options})

    def primary_ports(self) -> list[int]:
        """Ports of the nodes that are primaries now (a failover changes them)."""
        with redis.Redis(port=self.ports[0], decode_responses=True, **self._credentials()) as node:
            nodes = node.cluster("NODES")
        return sorted(int(address.rsplit(":", 1)[1]) for address, meta in nodes.items()
                      if "master" in meta["flags"] and "fail" not in meta["flags"])

    def describe(self) -> list[str]:
        """One line per node: address, role and slot ranges, for make run to print."""
        with redis.Redis(port=self.ports[0], decode_responses=True, **self._credentials()) as node:
            nodes = node.cluster("NODES")
        return [f"{address}  {', '.join(sorted(set(meta['flags'].split(',')) - {'myself'}))}"
                f"{'  slots ' + ' '.join('-'.join(r) for r in meta['slots']) if meta['slots'] else ''}"
                for address, meta in sorted(nodes.items())]

    def stop(self) -> None:
        """Stop every node and remove their data."""
        for node in self.nodes:
            node.cleanup()

    def __enter__(self) -> "LocalRedisCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
