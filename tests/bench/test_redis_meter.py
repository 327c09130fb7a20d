"""bench.run's RedisMeter: the server's commands and round trips, less the harness's own."""
import redis

from bench.run import RedisMeter


def test_the_meter_leaves_out_its_own_commands_and_their_round_trips(redis_server):
    meter = RedisMeter(redis_server.url)
    other = redis.Redis.from_url(redis_server.url)
    other.ping()  # connected before the first snapshot: no HELLO or CLIENT in the delta
    writes, reads = 7, 5
    before = meter.snapshot()
    for i in range(writes):
        other.set(f"meter:{i}", i)
    for i in range(reads):
        meter.client.get(f"meter:{i}")
    commands, round_trips = RedisMeter.delta(before, meter.snapshot())
    assert commands == {"set": writes}
    assert round_trips == writes
