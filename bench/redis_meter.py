"""The bench's one reader of what a redis-server did: commands, round trips, memory, CPU.

CountingRedis records what it sends itself, so a meter can take the harness's own
commands out of the server's figures; tests that count round trips use it too.
"""
from __future__ import annotations

from collections import Counter

import redis
from redis.client import Pipeline

from app.store import Store
from stack.cluster import LocalRedisCluster

# What sent records for each pipeline the client makes (no Redis command has this name).
PIPELINE = "pipeline"


class CountingRedis(redis.Redis):
    """A client that records each command it sends by itself, and each pipeline it makes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # A pipeline's own commands go through the pipeline object, not through here.
        self.sent: list[str] = []
        self.piped: Counter = Counter()  # the commands its pipelines sent, MULTI/EXEC too
        self.pipelines_sent = 0

    def execute_command(self, *args, **options):
        self.sent.append(str(args[0]))
        return super().execute_command(*args, **options)

    def pipeline(self, transaction=True, shard_hint=None):
        self.sent.append(PIPELINE)
        return _CountingPipeline(self, transaction, shard_hint)

    def commands(self) -> Counter:
        """Every command sent so far, alone or in a pipeline, by lower-case name."""
        alone = Counter(name.split()[0].lower() for name in self.sent if name != PIPELINE)
        return alone + self.piped

    def round_trips(self) -> int:
        """Requests sent so far: each command alone, and each pipeline executed."""
        return sum(1 for name in self.sent if name != PIPELINE) + self.pipelines_sent


class _CountingPipeline(Pipeline):
    """A pipeline that tells its client what it sent when it is executed."""

    def __init__(self, client: CountingRedis, transaction, shard_hint):
        super().__init__(client.connection_pool, client.response_callbacks, transaction,
                         shard_hint)
        self.client = client

    def execute(self, raise_on_error: bool = True):
        if self.command_stack:
            names = [str(args[0]).split()[0].lower() for args, _ in self.command_stack]
            self.client.piped.update(names + (["multi", "exec"] if self.transaction else []))
            self.client.pipelines_sent += 1
        return super().execute(raise_on_error)


def used_memory(client: redis.Redis) -> int:
    """INFO memory's used_memory: the bytes the server holds for its data and itself."""
    return client.info("memory")["used_memory"]


def used_cpu(client: redis.Redis) -> float:
    """CPU seconds redis-server has used so far (its main thread and children)."""
    info = client.info("cpu")
    return info["used_cpu_user"] + info["used_cpu_sys"]


def command_stats(client: redis.Redis) -> dict[str, dict]:
    """INFO commandstats by lower-case command name: calls, usec, usec_per_call, ..."""
    return {name.removeprefix("cmdstat_"): value
            for name, value in client.info("commandstats").items()}


class RedisMeter:
    """What one redis-server did between two snapshots, less the harness's own commands.

    INFO commandstats also counts the commands a Lua script runs, so it gives commands,
    not round trips. Round trips come from INFO stats' total_writes_processed: the server
    writes one reply per request (a pipeline's or an EVALSHA's replies leave together).
    """

    def __init__(self, url: str):
        self.client = CountingRedis.from_url(url, decode_responses=True)
        self.store = Store(self.client)

    def snapshot(self) -> tuple[Counter, int, Counter, int]:
        """The harness's own commands and requests so far, the server's calls per command,
        its replies."""
        # Before INFO: the INFO itself is not in its answer.
        own, own_trips = self.client.commands(), self.client.round_trips()
        info = self.client.info("stats", "commandstats")
        calls = Counter({name.removeprefix("cmdstat_"): value["calls"]
                         for name, value in info.items() if name.startswith("cmdstat_")})
        return own, own_trips, calls, info["total_writes_processed"]

    def round_trips(self) -> int:
        """Requests the server answered so far, less the harness's own (INFO stats only)."""
        own = self.client.round_trips()
        return self.client.info("stats")["total_writes_processed"] - own

    @staticmethod
    def delta(before, after) -> tuple[Counter, int]:
        """Commands per name and round trips between two snapshots, without the harness's."""
        (own0, trips0, calls0, writes0), (own1, trips1, calls1, writes1) = before, after
        calls = calls1.copy()
        calls.subtract(calls0)
        calls.subtract(own1 - own0)
        return +calls, writes1 - writes0 - (trips1 - trips0)

    def used_memory(self) -> int:
        """INFO memory's used_memory."""
        return used_memory(self.client)

    def used_cpu(self) -> float:
        """CPU seconds the server has used so far."""
        return used_cpu(self.client)

    def flush(self):
        """Empty every database (a fresh start for the next contender)."""
        self.client.flushall()


class ClusterMeter:
    """RedisMeter's figures summed over a Redis Cluster's primaries (replicas only copy)."""

    def __init__(self, cluster: LocalRedisCluster):
        self.cluster = cluster
        self.store = Store(cluster.client(decode_responses=True))
        self.primaries = [RedisMeter(f"redis://127.0.0.1:{port}/0")
                          for port in cluster.primary_ports()]

    def snapshot(self) -> list:
        """Each primary's snapshot."""
        return [meter.snapshot() for meter in self.primaries]

    def round_trips(self) -> int:
        """Requests the primaries answered so far, less the harness's own."""
        return sum(meter.round_trips() for meter in self.primaries)

    @staticmethod
    def delta(before: list, after: list) -> tuple[Counter, int]:
        """Commands per name and round trips of all the primaries together."""
        calls, trips = Counter(), 0
        for one_before, one_after in zip(before, after):
            node_calls, node_trips = RedisMeter.delta(one_before, one_after)
            calls.update(node_calls)
            trips += node_trips
        return calls, trips

    def used_memory(self) -> int:
        """used_memory summed over the primaries."""
        return sum(meter.used_memory() for meter in self.primaries)

    def used_cpu(self) -> float:
        """CPU seconds summed over the primaries."""
        return sum(meter.used_cpu() for meter in self.primaries)

    def flush(self):
        """Empty every primary."""
        for meter in self.primaries:
            meter.flush()
