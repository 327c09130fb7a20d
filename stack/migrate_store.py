"""python -m stack.migrate_store: a store in the layout before hash tags (v1) → today's, in place.

v1 (up to commit 804dcff) ran on one standalone Redis, with keys without hash tags
(`user:<id>`, `order:<id>`, `global:stats`, `top:users:spend:day:<d>`, ...). Today's layout
(app/store/keys.py's docstring) tags every key and spreads totals and rankings over
REDIS_SHARDS shards. The tool rewrites every v1 key into its new place:

- per-user and per-product keys, rejection records and the files path's keys are renamed
  (a rename keeps a record's expiry);
- additive totals (global, day, month, outcome counters) go whole into shard 0: readers
  sum the shards, so any split gives the same answers;
- what must stay disjoint per shard is split by its members' shard: day customers and
  user rankings by user, product rankings by product, corrections by the order's user;
- each order marker becomes a claim (the dedup window from now) plus an entry in every
  applied set its parts would have written, so a redelivery of an order counted before
  the migration is still a duplicate.

Each v1 key is converted in one MULTI/EXEC that also deletes it: an interrupted run
resumes where it stopped, and a second run finds nothing to do. Stop the workers first
(their v1 code would keep writing v1 keys), migrate, then start today's workers.
"""
from __future__ import annotations

import json
import time
from collections import defaultdict
from urllib.parse import quote, unquote

import click
import redis
from tqdm import tqdm

from app import settings as app_settings
from app import store as layout
from app.money import format_cents
from app.redis_client import is_cluster

# v1's single keys and where their content goes.
V1_GLOBAL = "global:stats"
V1_OUTCOMES = "pipeline:outcomes"
V1_CORRECTIONS = "corrections"
V1_REJECTED_INDEX = "rejected"
V1_RENAMED = {"pipeline:rejected-by-field": layout.REJECTED_BY_FIELD,
              "pipeline:lag": layout.LAG_KEY,
              "kpi:orders:dates": layout.KPI_DATES_KEY,
              "kpi:snapshots": layout.KPI_SNAPSHOTS_KEY,
              "files:executions": layout.EXECUTIONS_KEY}
# Outcome counters that live in a shard; the others are the {p} slot's bookkeeping.
SHARD_OUTCOMES = ("counted", "corrected")


def is_v1(key: str) -> bool:
    """Whether a key is in the v1 layout: every key of today's carries a {hash tag}.

    v1 percent-encoded ids, so no v1 key contains a brace.
    """
    return "{" not in key and key != layout.TASK_EVENTS_KEY


class Migration:
    """Converts v1 keys one by one on a standalone Redis."""

    def __init__(self, client: redis.Redis, settings: app_settings.Settings):
        self.redis = client
        # Today's Store decides shards and applied sets, as the workers will.
        self.store = layout.Store(client, settings)
        self.user_shard, self.product_shard = self.store.user_shard, self.store.product_shard
        self.window = settings.dedup_window_days * 86400
        self.now = time.time()
        self.converted: dict[str, int] = defaultdict(int)

    def convert(self, key: str) -> None:
        """Convert one v1 key and delete it, atomically; a key gone meanwhile is skipped."""
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.watch(key)
            if not pipe.exists(key):
                return
            kind = self._write(pipe, key)
            if kind is None:
                pipe.unwatch()
                self.converted["left as it is (unknown)"] += 1
                return
            pipe.delete(key)
            pipe.execute()
        self.converted[kind] += 1

    # The conversions: each queues its writes on pipe (already in MULTI) and says what it was.
    def _write(self, pipe, key: str) -> str | None:
        read = self.redis
        # v1 percent-encoded ids, so an id never holds a colon: it is the last part.
        name = unquote(key.rpartition(":")[2])
        if key in V1_RENAMED:
            return self._rename(pipe, key, V1_RENAMED[key])
        if key == V1_GLOBAL:
            return self._add_hash(pipe, read.hgetall(key), layout.global_key(0), "global totals")
        if key == V1_OUTCOMES:
            counters = read.hgetall(key)
            pipe.multi()
            for field, value in counters.items():
                target = (layout.outcomes_key(0) if field in SHARD_OUTCOMES
                          else layout.OUTCOMES_KEY)
                pipe.hincrby(target, field, int(value))
            return "outcome counters"
        if key == V1_CORRECTIONS:
            return self._corrections(pipe, read.hgetall(key))
        if key == V1_REJECTED_INDEX:
            entries = read.zrange(key, 0, -1, withscores=True)
            pipe.multi()
            if entries:
                pipe.zadd(layout.REJECTED_INDEX, dict(entries))
            return "rejection index"
        prefix, _, rest = key.partition(":")
        if prefix == "order":
            return self._claim(pipe, name, read.get(key))
        if prefix == "user":
            return self._rename(pipe, key, layout.user_key(name))
        if prefix == "user-days":
            return self._rename(pipe, key, layout.user_days_key(name))
        if prefix == "product":
            return self._rename(pipe, key, layout.product_key(name, self.product_shard(name)))
        if prefix == "rejected":
            return self._rename(pipe, key, layout.rejected_key(name))
        if prefix == "rejected-order":
            return self._rename(pipe, key, layout.rejected_order_key(name))
        if prefix == "day" and rest.endswith(":customers"):
            day = rest.removesuffix(":customers")
            return self._split_set(pipe, read.smembers(key),
                                   lambda user: layout.day_customers_key(day, self.user_shard(user)))
        if prefix == "day":
            return self._add_hash(pipe, read.hgetall(key), layout.day_key(rest, 0), "day totals")
        if prefix == "month":
            return self._add_hash(pipe, read.hgetall(key), layout.month_key(rest, 0),
                                  "month totals")
        if prefix == "top":
            return self._ranking(pipe, key, rest)
        if prefix == "kpi" and rest.startswith(("orders:", "categories:")):
            kind, _, day = rest.partition(":")
            new = layout.order_kpi_key(day) if kind == "orders" else layout.category_kpi_key(day)
            return self._rename(pipe, key, new)
        if prefix == "files" and rest.startswith("execution:"):
            return self._rename(pipe, key, layout.execution_key(name))
        if prefix == "files" and rest.startswith("execution-settled:"):
            return self._rename(pipe, key, layout.execution_settled_key(name))
        return None

    def _rename(self, pipe, key: str, new: str) -> str:
        if self.redis.exists(new):
            raise click.ClickException(f"{key} and {new} both exist: was a v1 worker "
                                       "started after the migration? Stop it, then run again")
        pipe.multi()
        pipe.rename(key, new)
        return "renamed"

    @staticmethod
    def _add_hash(pipe, fields: dict, new: str, kind: str) -> str:
        pipe.multi()
        for field, value in fields.items():
            # The integer figures add up; a decimal string (total_revenue) is redone by finish.
            if value.lstrip("-").isdigit():
                pipe.hincrby(new, field, int(value))
        return kind

    def _split_set(self, pipe, members, key_of) -> str:
        by_key = defaultdict(list)
        for member in members:
            by_key[key_of(member)].append(member)
        pipe.multi()
        for new, part in by_key.items():
            pipe.sadd(new, *part)
        return "day customers"

    def _ranking(self, pipe, key: str, rest: str) -> str | None:
        # top:users:<by>[:day:<d>|:month:<m>] and top:products:<by>
        parts = rest.split(":")
        entries = self.redis.zrange(key, 0, -1, withscores=True)
        if parts[0] == "users" and len(parts) in (2, 4):
            day = parts[3] if len(parts) == 4 and parts[2] == "day" else ""
            month = parts[3] if len(parts) == 4 and parts[2] == "month" else ""
            key_of = lambda user: layout.top_users_key(parts[1], day=day, month=month,  # noqa: E731
                                                       shard=self.user_shard(user))
        elif parts[0] == "products" and len(parts) == 2:
            key_of = lambda product: layout.top_products_key(  # noqa: E731
                parts[1], self.product_shard(product))
        else:
            return None
        pipe.multi()
        for member, score in entries:
            pipe.zincrby(key_of(member), score, member)
        return "rankings"

    def _corrections(self, pipe, corrections: dict) -> str:
        users = {}
        for order_id in corrections:
            # The v1 marker, or its claim if an interrupted run converted it already.
            fingerprint = (self.redis.get(f"order:{quote(order_id, safe='')}")
                           or self.redis.get(layout.order_key(order_id)))
            if fingerprint is None:
                raise click.ClickException(f"correction of order {order_id!r} whose marker is gone")
            users[order_id] = json.loads(fingerprint)[0]
        pipe.multi()
        for order_id, record in corrections.items():
            pipe.hset(layout.corrections_key(self.user_shard(users[order_id])), order_id, record)
        return "corrections"

    def _claim(self, pipe, order_id: str, fingerprint: str) -> str:
        mark = layout.applied_mark(order_id, fingerprint)
        pipe.multi()
        pipe.set(layout.order_key(order_id), fingerprint, ex=self.window, nx=True)
        for key in self.store.applied_keys(fingerprint):
            pipe.zadd(key, {mark: self.now})
            pipe.expire(key, self.window)
        return "order claims"

    def finish(self) -> None:
        """Redo shard 0's decimal revenue string from its cents, as the script keeps it."""
        key = layout.global_key(0)
        cents = self.redis.hget(key, "total_revenue_cents")
        if cents is not None:
            self.redis.hset(key, "total_revenue", format_cents(int(cents)))


def v1_keys(client: redis.Redis) -> list[str]:
    """Every v1 key, order markers before the corrections that look them up."""
    keys = [key for key in client.scan_iter(count=1000) if is_v1(key)]
    # Corrections first: they read the order markers the claims replace.
    return sorted(keys, key=lambda key: key != V1_CORRECTIONS)


@click.command()
@click.option("--dry-run", is_flag=True, help="Count the v1 keys and change nothing.")
def main(dry_run: bool):
    """Convert REDIS_URL's store from the v1 layout into today's, in place (idempotent)."""
    settings = app_settings.from_env_or_exit()
    try:
        migrate(settings, dry_run)
    except redis.RedisError as exc:
        raise click.ClickException(f"Redis: {exc} (what was converted stays converted: run "
                                   "again to go on)") from None


def migrate(settings: app_settings.Settings, dry_run: bool) -> None:
    """Convert every v1 key of settings.redis_url, reporting on stderr."""
    if is_cluster(settings.redis_url):
        raise click.ClickException("REDIS_URL names a Redis Cluster; the v1 layout only ran on "
                                   "a standalone Redis: migrate there, then move the data")
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    keys = v1_keys(client)
    click.echo(f"{len(keys)} keys in the v1 layout", err=True)
    if dry_run:
        return
    migration = Migration(client, settings)
    for key in tqdm(keys, desc="migrating", unit="key"):
        migration.convert(key)
    # Also after an interrupted run whose keys were all converted already.
    migration.finish()
    for kind, count in sorted(migration.converted.items()):
        click.echo(f"{count:8,}  {kind}", err=True)


if __name__ == "__main__":
    main()
