"""The aggregates' Redis as the API reads it, on top of the exactly-once writes."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass

import redis
from redis.cluster import RedisCluster

from app import ranking
from app.settings import Settings
from app.store import lua
from app.store.keys import (LAG_KEY, OUTCOMES_KEY, REJECTED_BY_FIELD, REJECTED_ENTRIES,
                            REJECTED_INDEX, REJECTED_TALLY, TASK_EVENTS_KEY, corrections_key,
                            day_key, global_key, month_key, outcomes_key, product_key,
                            rejected_key, rejected_order_key, user_days_key, user_key)
from app.store.writes import Writer

OUTCOMES = ("counted", "duplicate", "rejected", "conflict")
# The day and month hashes' figures, in the order Store.kpis returns them.
KPI_FIELDS = ("total_orders", "total_revenue_cents", "total_items_sold", "unique_customers")


@dataclass(frozen=True)
class UserTotals:
    """All-time figures of one user."""

    user_id: str
    order_count: int
    total_spend_cents: int


@dataclass(frozen=True)
class UserRecord(UserTotals):
    """Everything the user hash holds: totals and first/last order times (ms since epoch)."""

    first_order_ms: int | None
    last_order_ms: int | None


@dataclass(frozen=True)
class PlatformTotals:
    """All-time figures of the platform."""

    total_orders: int
    total_revenue_cents: int


class Store(Writer):
    """The aggregates: exactly-once writes (Writer) and every read of the API and the CLI."""

    def __init__(self, client: redis.Redis | RedisCluster, settings: Settings | None = None):
        super().__init__(client, settings)
        self._forget_rejection = lua.register(client, "forget_rejection")
        # A read function, so the API's user runs it with FCALL_RO (see lua.py).
        self._ranked = lua.ReadFunction(client, "ranked")

    def _pipeline(self, one_slot: bool = False):
        # MULTI/EXEC gives a consistent snapshot where the keys allow it: on a cluster only
        # within one slot.
        return self.redis.pipeline(transaction=one_slot or not self.cluster)

    def _summed(self, keys: list[str], fields: tuple[str, ...]) -> list[int]:
        """The fields summed over the hashes."""
        pipe = self._pipeline()
        for key in keys:
            pipe.hmget(key, *fields)
        totals = [0] * len(fields)
        for values in pipe.execute():
            totals = [t + int(v or 0) for t, v in zip(totals, values)]
        return totals

    def user(self, user_id: str) -> UserRecord | None:
        """The user's hash, or None when the user has no counted order: O(1)."""
        count, cents, first, last = self.redis.hmget(
            user_key(user_id), "order_count", "total_spend_cents", "first_order_ts",
            "last_order_ts")
        if count is None:
            return None
        return UserRecord(user_id, int(count), int(cents or 0), _int_or_none(first),
                          _int_or_none(last))

    def user_stats(self, user_id: str) -> UserTotals | None:
        """A user's all-time totals, or None when the user has no counted order."""
        record = self.user(user_id)
        return record and UserTotals(user_id, record.order_count, record.total_spend_cents)

    def user_days(self, user_id: str, days: list[str]) -> list[tuple[int, int]] | None:
        """(orders, cents) of a user on each day (YYYY-MM-DD), or None for an unknown user."""
        pipe = self._pipeline(one_slot=True)
        pipe.hexists(user_key(user_id), "order_count")
        pipe.hmget(user_days_key(user_id), days)
        known, packed = pipe.execute()
        if not known:
            return None
        return [tuple(map(int, value.split(":"))) if value else (0, 0) for value in packed]

    def kpis(self, buckets: list[str], monthly: bool = False) -> list[tuple[int, ...]]:
        """KPI_FIELDS of each day (YYYY-MM-DD) or month (YYYY-MM), summed over the shards."""
        key = month_key if monthly else day_key
        # One pipeline, O(buckets x shards); a consistent snapshot on a standalone Redis.
        pipe = self._pipeline()
        for bucket in buckets:
            for shard in range(self.shards):
                pipe.hmget(key(bucket, shard), *KPI_FIELDS)
        replies = pipe.execute()
        figures = []
        for b in range(len(buckets)):
            shares = replies[b * self.shards:(b + 1) * self.shards]
            figures.append(tuple(sum(int(share[f] or 0) for share in shares)
                                 for f in range(len(KPI_FIELDS))))
        return figures

    def product(self, product_id: str) -> tuple[int, int, int] | None:
        """A product's (units sold, revenue cents, orders), or None if never sold: O(1)."""
        units, cents, orders = self.redis.hmget(
            product_key(product_id, self.product_shard(product_id)), "units_sold",
            "revenue_cents", "orders")
        if orders is None:
            return None
        return int(units or 0), int(cents or 0), int(orders)

    def global_stats(self) -> PlatformTotals:
        """The platform's all-time totals, summed over the shards (zeros when empty)."""
        return PlatformTotals(*self._summed([global_key(s) for s in range(self.shards)],
                                         ("total_orders", "total_revenue_cents")))

    def outcomes(self) -> dict[str, int]:
        """How many messages ended in each outcome."""
        keys = [outcomes_key(s) for s in range(self.shards)] + [OUTCOMES_KEY]
        return dict(zip(OUTCOMES, self._summed(keys, OUTCOMES)))

    def corrected(self) -> int:
        """How many counted orders had their value corrected (ORDER_VALUE_MISMATCH=correct)."""
        [count] = self._summed([outcomes_key(s) for s in range(self.shards)], ("corrected",))
        return count

    def correction(self, order_id: str, user_id: str) -> dict | None:
        """What the mismatch policy changed in a counted order, or None."""
        raw = self.redis.hget(corrections_key(self.user_shard(user_id)), order_id)
        return json.loads(raw) if raw else None

    def top(self, keys_of, second_keys_of, n: int, bounds_of=None) -> list[tuple[str, int, int]]:
        """ranked() over every shard, merged: exact, as each member lives in one shard.

        keys_of(shard), second_keys_of(shard) and bounds_of(shard) give that shard's sorted
        sets and their bounds (see ranked).
        """
        shards = range(self.shards)
        if any(len(keys_of(shard)) > 1 for shard in shards):
            # Several sets per shard (a range of days and months): one pass over all shards.
            return self._ranked_shards([(keys_of(shard), second_keys_of(shard),
                                         bounds_of(shard) if bounds_of else None)
                                        for shard in shards], n)
        if not self.cluster:
            # One set per shard (all-time, a day, a month): every shard's top in one pipeline.
            replies = self._ranked.each([([*keys_of(shard), *second_keys_of(shard)], [n])
                                         for shard in shards])
            merged = [entry for flat in replies for entry in _triples(flat)]
        else:
            merged = [entry for shard in shards
                      for entry in self.ranked(keys_of(shard), second_keys_of(shard), n)]
        return sorted(merged, key=lambda entry: (-entry[1], entry[0].encode("utf-8",
                                                                              "surrogatepass")))[:n]

    def rejected_by_field(self) -> dict[str, int]:
        """How many rejections named each field ('_schema': the body as a whole)."""
        return {field: int(n) for field, n in self.redis.hgetall(REJECTED_BY_FIELD).items()}

    def lag(self) -> tuple[int, int] | None:
        """(oldest SentTimestamp, applied time) of the last applied batch, in ms, or None."""
        sent, applied = self.redis.hmget(LAG_KEY, "oldest_sent_ms", "applied_ms")
        return (int(sent), int(applied)) if sent and applied else None

    def count_task_event(self, event: str):
        """Count a task event such as a retry or a failure."""
        self.redis.hincrby(TASK_EVENTS_KEY, event, 1)

    def task_events(self) -> dict[str, int]:
        """Counts of task events (retried, failed)."""
        return {event: int(n) for event, n in self.redis.hgetall(TASK_EVENTS_KEY).items()}

    def rejected(self, offset: int = 0, limit: int = 50) -> list[dict]:
        """Rejected messages within the retention, newest first."""
        ids = self.redis.zrevrangebyscore(REJECTED_INDEX, "+inf",
                                          time.time() - self.retention_seconds,
                                          start=offset, num=limit)
        # A record may have expired since the index was last trimmed: skipped.
        return [r for r in map(self.rejection, ids) if r]

    def rejected_store(self) -> dict[str, int]:
        """The rejected store's records, their bytes, and the records its caps dropped."""
        pipe = self._pipeline(one_slot=True)
        pipe.zcard(REJECTED_INDEX)
        pipe.hmget(REJECTED_TALLY, "bytes", "dropped")
        records, (size, dropped) = pipe.execute()
        return {"records": records, "bytes": int(size or 0), "dropped": int(dropped or 0)}

    def rejection(self, some_id: str) -> dict | None:
        """One rejected message by message id or order id, with its body and reasons.

        A body larger than MAX_ORDER_BYTES was kept as its first KEPT_BODY_BYTES, with
        body_bytes (its size) and body_sha256.
        """
        record = self.redis.hgetall(rejected_key(some_id))
        if not record:
            message_id = self.redis.get(rejected_order_key(some_id))
            record = self.redis.hgetall(rejected_key(message_id)) if message_id else {}
        if not record:
            return None
        record["reasons"] = json.loads(record["reasons"])
        record["at"] = float(record["at"])
        if "body_bytes" in record:
            record["body_bytes"] = int(record["body_bytes"])
        return record

    def forget_rejection(self, record: dict) -> bool:
        """Delete a rejection record as read by rejection() and uncount it.

        False when it is gone, or was written again since (the message was rejected anew).
        """
        keys = [rejected_key(record["message_id"]), REJECTED_INDEX, OUTCOMES_KEY,
                REJECTED_ENTRIES, REJECTED_TALLY]
        if record.get("order_id"):
            keys.append(rejected_order_key(record["order_id"]))
        return bool(self._forget_rejection(keys=keys, args=[repr(record["at"])]))

    def ranked(self, keys: list[str], second_keys: list[str], n: int,
               bounds: list[str | None] | None = None) -> list[tuple[str, int, int]]:
        """The n best members of the summed sorted sets, ties by member, with a second measure.

        One set: one round trip, O(log N + n). Several: app.ranking reads them a page at a
        time in the API process, every command bounded, two pipelined round trips a round.
        bounds[i], if any: a set holding every member of keys[i] with at least its score
        there (a month's ranking for one of its days); keys sharing one read through it.
        """
        bounds = bounds or [None] * len(keys)
        if not keys or not len(keys) == len(second_keys) == len(bounds) or n < 1:
            raise ValueError("ranked needs as many second keys and bounds as keys, and n >= 1")
        if len(keys) == 1:
            # On a cluster two keys in two slots cannot share a call: the second measure
            # then comes next (a shard's rankings share its slot, so they can).
            apart = self.cluster and (self.redis.keyslot(keys[0])
                                      != self.redis.keyslot(second_keys[0]))
            flat = self._ranked(keys if apart else [*keys, *second_keys], [n])
            top = _triples(flat)
            if apart and top:
                seconds = self.redis.zmscore(second_keys[0], [member for member, _, _ in top])
                top = [(member, score, int(second or 0))
                       for (member, score, _), second in zip(top, seconds)]
            return top
        return self._ranked_shards([(keys, second_keys, bounds)], n)

    def _ranked_shards(self, shards: list[tuple[list[str], list[str], list[str | None] | None]],
                       n: int) -> list[tuple[str, int, int]]:
        """ranked() over the (keys, second keys, bounds) of shards, each member in one shard.

        One pass (app.ranking.ranked_groups): the shards' reads of a round share one
        pipeline, and they share the n-th total, so a shard holding little of the top is
        read no deeper than that needs.
        """
        sources, groups, bounded = [], [], set()
        for keys, second_keys, bounds in shards:
            ranked_by, second, shard_bounded = _sources(keys, second_keys,
                                                        bounds or [None] * len(keys))
            first = len(sources)
            bounded |= {first + i for i in shard_bounded}
            groups.append((range(first, first + len(ranked_by)),
                           range(first + len(ranked_by), first + len(ranked_by) + len(second))))
            sources += [*ranked_by, *second]
        top = ranking.ranked_groups(_SortedSets(self.redis, sources), groups, n, bounded=bounded)
        return [(member, int(score), int(second)) for member, score, second in top]

    def ping(self) -> bool:
        """True when Redis answers."""
        return bool(self.redis.ping())


class _SortedSets:
    """app.ranking's sources on Redis: one pipeline per batch, each command on one key
    and bounded (a page, or a lookup of at most a page of members), so it runs on a
    cluster whose sets sit on different nodes. A source is the key its pages come from
    and the keys whose scores it sums (several for a bounded source)."""

    def __init__(self, client: redis.Redis, sources: list[tuple[str, list[str]]]):
        self.client, self.sources = client, sources

    def pages(self, reads):
        pipe = self.client.pipeline(transaction=False)
        for source, start, stop in reads:
            pipe.zrevrange(self.sources[source][0], start, stop, withscores=True)
        return pipe.execute()

    def scores(self, lookups):
        pipe = self.client.pipeline(transaction=False)
        for source, members in lookups:
            for key in self.sources[source][1]:
                pipe.zmscore(key, members)
        replies = iter(pipe.execute())
        results = []
        for source, members in lookups:
            parts = [next(replies) for _ in self.sources[source][1]]
            results.append([None if all(p[i] is None for p in parts)
                            else sum(p[i] or 0 for p in parts) for i in range(len(members))])
        return results


def _sources(keys: list[str], second_keys: list[str], bounds: list[str | None]
             ) -> tuple[list[tuple[str, list[str]]], list[tuple[str, list[str]]], set[int]]:
    """Ranked and second sources of ranked(): keys sharing a bound read as one source."""
    groups: dict[object, list[int]] = {}
    for i, bound in enumerate(bounds):
        groups.setdefault(bound or i, []).append(i)
    ranked_by, second, bounded = [], [], set()
    for bound, members in groups.items():
        if len(members) > 1:
            bounded.add(len(ranked_by))
            ranked_by.append((bound, [keys[i] for i in members]))
        else:
            ranked_by.append((keys[members[0]], [keys[members[0]]]))
        second.append((second_keys[members[0]], [second_keys[i] for i in members]))
    return ranked_by, second, bounded


def _triples(flat: list) -> list[tuple[str, int, int]]:
    """ranked.lua's flat reply as (member, score, second score) triples."""
    return [(flat[i], int(flat[i + 1]), int(flat[i + 2])) for i in range(0, len(flat), 3)]


def _int_or_none(raw: str | None) -> int | None:
    return int(raw) if raw is not None else None
