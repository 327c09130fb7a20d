"""bench.redis_meter.RedisMeter: the server's commands and round trips, less the harness's own."""
import redis

from bench.redis_meter import RedisMeter


def test_the_meter_leaves_out_its_own_commands_and_their_round_trips(redis_server):
    """Its commands alone and in pipelines (the progress polls are pipelines)."""
    meter = RedisMeter(redis_server.url)
    other = redis.Redis.from_url(redis_server.url)
    other.ping()  # connected before the first snapshot: no HELLO or CLIENT in the delta
    writes, reads = 7, 5
    before = meter.snapshot()
    for i in range(writes):
        other.set(f"meter:{i}", i)
    for i in range(reads):
        meter.client.get(f"meter:{i}")
    meter.store.outcomes()  # the harness's progress poll: one MULTI/EXEC pipeline
    pipe = meter.client.pipeline(transaction=False)
    pipe.get("meter:0").get("meter:1")
    pipe.execute()
    commands, round_trips = RedisMeter.delta(before, meter.snapshot())
    assert commands == {"set": writes}
    assert round_trips == writes
