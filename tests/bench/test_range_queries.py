"""make bench's range rankings part on a tiny data set: it runs and both ways agree.

A smoke test of the harness, not of speed: no duration is compared with anything.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from app.store import Store, top_users_key
from bench import range_data, range_queries

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(180)
def test_range_part_measures_both_ways_and_their_answers_agree(tmp_path):
    command = [sys.executable, "-m", "bench.range_queries", "--orders-per-day", "300",
               "--days", "75", "--users", "3000", "--apply-seconds", "1", "--out", str(tmp_path)]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=170)
    assert run.returncode == 0, run.stderr[-3000:]

    result = json.loads((tmp_path / "range_queries.json").read_text())
    assert result["data"]["orders"] == 300 * 75
    periods = [(label, p.first.isoformat(), p.last.isoformat())
               for label, p in range_data.periods(75)]
    assert [(r["layout"], r["period"], r["first"], r["last"], r["by"])
            for r in result["queries"]] == [
        (layout, *period, by) for layout in ("spread", "one shard") for period in periods
        for by in ("spend", "orders")]
    for row in result["queries"]:
        assert row["answers_agree"], row
        assert row["buckets"] > 1  # every period is a sum of several sets
        assert row["merged"]["commands"] > 0
        if row["layout"] == "one shard":
            # SLOWLOG lists a script's own commands too; the script's EVALSHA holds them all.
            assert row["zunionstore"]["slowest_command"] == "EVALSHA"
        else:
            assert row["zunionstore"] is None  # the script knew one set a bucket
    assert [r["beside"].split(",")[-1].strip() for r in result["apply_latency"]] == [
        "nothing", "no Redis", "merged page by page", "ZUNIONSTORE script"]
    assert all(r["batches"] > 0 and not r["errors"] for r in result["apply_latency"])
    assert run.stdout.strip() == range_queries.markdown(result).strip()


def test_periods_are_a_year_3_whole_months_and_3_cut_months():
    (_, year), (_, whole), (_, cut) = range_data.periods(366)
    assert (year.first.isoformat(), year.last.isoformat()) == ("2024-01-01", "2024-12-31")
    assert (whole.first.isoformat(), whole.last.isoformat()) == ("2024-10-01", "2024-12-31")
    assert len(year.buckets()) == 12 and len(whole.buckets()) == 3
    assert cut.first.day != 1 and len(cut.buckets()) > 3


def test_spread_puts_each_user_in_its_store_shard_with_the_one_shard_figures(redis_server):
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    store = Store(client)
    days = ["2024-01-01", "2024-01-02", "2024-01-03"]
    buckets = [{"day": d} for d in days] + [{"month": "2024-01"}]

    def sets():
        """Each ranking's members and scores, by (by, bucket, shard)."""
        return {(by, *b.values(), shard): dict(client.zrange(
                    top_users_key(by, shard=shard, **b), 0, -1, withscores=True))
                for by in ("spend", "orders") for b in buckets for shard in range(store.shards)}

    client.flushdb()
    range_data.fill(client, 60, len(days), 300, lambda user_id: 0)
    one_shard = sets()
    client.flushdb()
    range_data.fill(client, 60, len(days), 300, store.user_shard)
    spread = sets()
    client.flushdb()

    assert all(not members for (*_, shard), members in one_shard.items() if shard)
    assert len({shard for (*_, shard), members in spread.items() if members}) == store.shards
    for (by, bucket, shard), members in spread.items():
        assert all(store.user_shard(user) == shard for user in members)
    for by in ("spend", "orders"):
        for b in buckets:
            bucket = next(iter(b.values()))
            merged = {user: score for shard in range(store.shards)
                      for user, score in spread[by, bucket, shard].items()}
            assert merged == one_shard[by, bucket, 0] and merged
