"""The batch files path's records (app/files) in the aggregates' Redis: KPI tables and
execution records.

The seed's DynamoDB tables, in Redis: OrderKPIs by order_date, CategoryKPIs by
(category, order_date). Exact integers are stored; rates and averages are derived on read.
"""
from __future__ import annotations

import json
import time
from datetime import date

import redis

from app.redis_client import connect
from app.store import lua
from app.store.keys import (APPLIED_UPLOADS_KEY, EXECUTIONS_KEY, KPI_DATES_KEY,
                            KPI_SNAPSHOTS_KEY, KPI_WATERMARKS_KEY, RUNNING_EXECUTIONS_KEY,
                            category_kpi_key, execution_attempts_key, execution_key,
                            execution_plan_key, execution_settled_key, execution_steps_key,
                            order_kpi_key, upload_lock_key)

# How long an execution's plan, step results and announcement are kept.
EXECUTION_STATE_SECONDS = 7 * 86400
ORDER_KPI_FIELDS = ("total_orders", "total_revenue_cents", "total_items_sold",
                    "unique_customers", "returned_orders")


class FilesStore:
    """KPI tables and execution records of the batch files path, in the aggregates' Redis."""

    def __init__(self, client: redis.Redis, record_days: int | None = None):
        self.redis = client
        # How long an execution's record lives after its last save (None: for ever).
        self.record_days = record_days
        self._write_kpis = lua.register(client, "write_kpis")

    @classmethod
    def from_url(cls, url: str, record_days: int | None = None) -> "FilesStore":
        """A FilesStore on a new client for the Redis URL."""
        return cls(connect(url, decode_responses=True, socket_timeout=10,
                           socket_connect_timeout=5), record_days)

    def write_kpis(self, rank: int, dates: list[str], order_kpis, category_kpis,
                   versions: dict[str, int | None] | None = None) -> int:
        """Replace the KPIs of the dates and raise the tables' watermarks to the versions
        they were computed from, in one atomic call; return the dates written."""
        orders = {k.order_date: k for k in order_kpis}
        categories: dict[str, list[str]] = {d: [] for d in dates}
        for k in category_kpis:
            categories.setdefault(k.order_date, []).extend(
                [k.category, json.dumps([k.daily_revenue_cents, k.orders, k.items,
                                         k.returned_items])])
        days, keys = [], [KPI_SNAPSHOTS_KEY, KPI_DATES_KEY, KPI_WATERMARKS_KEY]
        for day in dates:
            entry = {"date": day, "ordinal": date.fromisoformat(day).toordinal(),
                     "categories": categories.get(day, [])}
            if day in orders:
                entry["order"] = [x for f in ORDER_KPI_FIELDS
                                  for x in (f, str(getattr(orders[day], f)))]
            days.append(entry)
            keys += [order_kpi_key(day), category_kpi_key(day)]
        # cjson turns an empty Lua table into {}: send the categories as arrays explicitly.
        payload = json.dumps(days, ensure_ascii=False)
        made = json.dumps({t: v for t, v in (versions or {}).items() if v is not None})
        return int(self._write_kpis(keys=keys, args=[rank, payload, made]))

    def kpi_watermarks(self) -> dict[str, int]:
        """table -> the last version whose changes the stored KPIs include."""
        return {t: int(v) for t, v in self.redis.hgetall(KPI_WATERMARKS_KEY).items()}

    def kpi_dates(self) -> list[str]:
        """Every date that has order KPIs."""
        return self.redis.zrange(KPI_DATES_KEY, 0, -1)

    def _dates(self, start: str, end: str) -> list[str]:
        return self.redis.zrangebyscore(KPI_DATES_KEY, date.fromisoformat(start).toordinal(),
                                        date.fromisoformat(end).toordinal())

    def order_kpis(self, start: str, end: str) -> list[dict]:
        """Raw order KPIs of the dates with orders in [start, end], by date."""
        dates = self._dates(start, end)
        pipe = self.redis.pipeline(transaction=True)
        for day in dates:
            pipe.hgetall(order_kpi_key(day))
        return [{"order_date": day, **{f: int(raw.get(f, 0)) for f in ORDER_KPI_FIELDS}}
                for day, raw in zip(dates, pipe.execute()) if raw]

    def category_kpis(self, start: str, end: str, category: str | None = None) -> list[dict]:
        """Raw category KPIs in [start, end] (one category or all), by category then date."""
        dates = self._dates(start, end)
        pipe = self.redis.pipeline(transaction=True)
        for day in dates:
            if category is None:
                pipe.hgetall(category_kpi_key(day))
            else:
                pipe.hmget(category_kpi_key(day), [category])
        rows = []
        for day, raw in zip(dates, pipe.execute()):
            pairs = raw.items() if category is None else zip([category], raw)
            for name, value in pairs:
                if value is None:
                    continue
                revenue, orders, items, returned = json.loads(value)
                rows.append({"category": name, "order_date": day, "daily_revenue_cents": revenue,
                             "orders": orders, "items": items, "returned_items": returned})
        return sorted(rows, key=lambda r: (r["category"], r["order_date"]))

    def save_execution(self, record: dict) -> None:
        """Store (or replace) an execution's record, list it by start time, and index it
        while it runs; records expire record_days after their last save."""
        execution_id, started_ms = record["execution_id"], record["started_at_ms"]
        ttl = self.record_days * 86400 if self.record_days else None
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(execution_key(execution_id), json.dumps(record, ensure_ascii=False, default=str),
                 ex=ttl)
        pipe.zadd(EXECUTIONS_KEY, {execution_id: started_ms})
        if record["status"] == "running":
            pipe.zadd(RUNNING_EXECUTIONS_KEY, {execution_id: started_ms})
        else:
            pipe.zrem(RUNNING_EXECUTIONS_KEY, execution_id)
        if ttl:
            # The list forgets what has expired, so that it does not grow for ever either.
            pipe.zremrangebyscore(EXECUTIONS_KEY, "-inf", f"({int(time.time() - ttl) * 1000}")
        pipe.execute()

    def execution(self, execution_id: str) -> dict | None:
        """One execution's record, or None."""
        raw = self.redis.get(execution_key(execution_id))
        return json.loads(raw) if raw else None

    def executions(self, limit: int = 20) -> list[dict]:
        """The latest executions' records, newest first."""
        ids = self.redis.zrevrange(EXECUTIONS_KEY, 0, max(limit, 1) - 1)
        if not ids:
            return []
        return [json.loads(raw) for raw in self.redis.mget([execution_key(i) for i in ids]) if raw]

    def running_since(self, started_before_ms: int) -> list[str]:
        """Ids of the executions still running that started before the time (ms)."""
        return self.redis.zrangebyscore(RUNNING_EXECUTIONS_KEY, "-inf", f"({started_before_ms}")

    def forget_running(self, execution_id: str) -> None:
        """Drop an execution from the running ones (its record is gone)."""
        self.redis.zrem(RUNNING_EXECUTIONS_KEY, execution_id)

    def settled(self, execution_id: str) -> str | None:
        """How an execution was announced ("succeeded" or "failed"), or None."""
        return self.redis.get(execution_settled_key(execution_id))

    def mark_settled(self, execution_id: str, status: str,
                     ttl_seconds: int = EXECUTION_STATE_SECONDS):
        """Remember that an execution's outcome was announced (for a week)."""
        self.redis.set(execution_settled_key(execution_id), status, ex=ttl_seconds)

    def save_plan(self, execution_id: str, plan: dict) -> None:
        """What an execution is to do (its uploads and events): what its steps read, never
        their messages."""
        self.redis.set(execution_plan_key(execution_id), json.dumps(plan),
                       ex=EXECUTION_STATE_SECONDS)

    def plan(self, execution_id: str) -> dict | None:
        """An execution's plan, or None for an execution never started."""
        raw = self.redis.get(execution_plan_key(execution_id))
        return json.loads(raw) if raw else None

    def save_step(self, execution_id: str, name: str, result: dict) -> None:
        """Keep one step's result (a staged file by its key, or the KPIs)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(execution_steps_key(execution_id), name, json.dumps(result, default=str))
        pipe.expire(execution_steps_key(execution_id), EXECUTION_STATE_SECONDS)
        pipe.execute()

    def steps(self, execution_id: str) -> dict[str, dict]:
        """The results an execution's steps kept, by name."""
        raw = self.redis.hgetall(execution_steps_key(execution_id))
        return {name: json.loads(value) for name, value in raw.items()}

    def count_attempt(self, execution_id: str, step: str) -> int:
        """Count one more start of a step of an execution; how many starts so far."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hincrby(execution_attempts_key(execution_id), step, 1)
        pipe.expire(execution_attempts_key(execution_id), EXECUTION_STATE_SECONDS)
        return int(pipe.execute()[0])

    def upload_lock(self, key: str, timeout: float):
        """redis-py's lock on one input/ key (expires after timeout, should its holder die)."""
        return self.redis.lock(upload_lock_key(key), timeout=timeout, blocking_timeout=timeout)

    def applied_upload(self, key: str) -> list | None:
        """The order (sequencer, event time) of the newest upload of an input/ key staged."""
        raw = self.redis.hget(APPLIED_UPLOADS_KEY, key)
        return json.loads(raw) if raw else None

    def set_applied_upload(self, key: str, order: tuple[int, str]) -> None:
        """Remember the order of the upload of a key being staged."""
        self.redis.hset(APPLIED_UPLOADS_KEY, key, json.dumps(order))
