"""A Redis client that records what it sends: for tests that count round trips and for
the bench's RedisMeter, which takes the harness's own commands out of the server's stats."""
from __future__ import annotations

from collections import Counter

import redis

# What sent records for each pipeline the client makes (no Redis command has this name).
PIPELINE = "pipeline"


class CountingRedis(redis.Redis):
    """A client that records each command it sends by itself, and each pipeline it makes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # A pipeline's own commands go through the pipeline object, not through here.
        self.sent: list[str] = []

    def execute_command(self, *args, **options):
        self.sent.append(str(args[0]))
        return super().execute_command(*args, **options)

    def pipeline(self, *args, **kwargs):
        self.sent.append(PIPELINE)
        return super().pipeline(*args, **kwargs)

    def commands(self) -> Counter:
        """The commands sent by themselves so far, by lower-case name (pipelines left out)."""
        return Counter(name.split()[0].lower() for name in self.sent if name != PIPELINE)
