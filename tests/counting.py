"""A Redis client that records what it sends: for tests that count round trips and for
the bench's RedisMeter, which takes the harness's own commands out of the server's stats."""
from __future__ import annotations

from collections import Counter

import redis
from redis.client import Pipeline

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
