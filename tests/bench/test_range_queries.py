"""make bench's range rankings part on a tiny data set: it runs and both ways agree.

A smoke test of the harness, not of speed: no duration is compared with anything.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import range_queries

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
               for label, p in range_queries.periods(75)]
    assert [(r["period"], r["first"], r["last"], r["by"]) for r in result["queries"]] == [
        (*period, by) for period in periods for by in ("spend", "orders")]
    for row in result["queries"]:
        assert row["answers_agree"], row
        assert row["buckets"] > 1  # every period is a sum of several sets
        assert row["merged"]["commands"] > 0
        # SLOWLOG lists a script's own commands too; the script's EVALSHA holds them all.
        assert row["zunionstore"]["slowest_command"] == "EVALSHA"
    assert [r["beside"].split(",")[-1].strip() for r in result["apply_latency"]] == [
        "nothing", "no Redis", "merged page by page", "ZUNIONSTORE script"]
    assert all(r["batches"] > 0 and not r["errors"] for r in result["apply_latency"])
    assert run.stdout.strip() == range_queries.markdown(result).strip()


def test_periods_are_a_year_3_whole_months_and_3_cut_months():
    (_, year), (_, whole), (_, cut) = range_queries.periods(366)
    assert (year.first.isoformat(), year.last.isoformat()) == ("2024-01-01", "2024-12-31")
    assert (whole.first.isoformat(), whole.last.isoformat()) == ("2024-10-01", "2024-12-31")
    assert len(year.buckets()) == 12 and len(whole.buckets()) == 3
    assert cut.first.day != 1 and len(cut.buckets()) > 3
