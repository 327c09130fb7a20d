"""Exactly-once writes: a batch's orders counted and its rejections recorded.

Exactly once across slots. One order touches several slots, so no single script makes it
atomic on a cluster; instead:

1. Claim: ``order:{o:<id>}`` is set to the fingerprint unless it exists. Another
   fingerprint there is a conflict: refused, recorded, nothing applied.
2. Check: every part reads the figures it would add to and tells whether the order fits
   under MAX_TOTAL (or that it applied that order already). An order that does not fit
   anywhere, with no part applied yet, is rejected whole and its claim removed.
3. Parts: each part applies the order unless its own ``applied`` set names it, and adds
   the order to that set in the same script (kept for the window), so running a part again
   changes nothing.

A crash, a timeout or a failover between any two steps leaves some parts applied, each
whole; the redelivered message finds its claim with the same fingerprint, checks the
parts, applies the missing ones and skips the rest. The "counted" counter is in the shard
part, so it moves once per order; an attempt that found nothing left to apply counts as a
duplicate. A redelivery after the window (claim and markers expired) is counted again.

Round trips: on a standalone Redis the same pieces run composed in one script call per
batch (no CROSSSLOT on one node): claims, checks and every part (apply_batch.lua). Python
decides each order's verdict from the checks (verdict_of, for both ways); the call itself
applies, atomically, the orders the protocol alone settles (new and fitting: counted; a
redelivery with no part over: its missing parts applied, or a duplicate when none was
missing) and leaves out any other (a conflict, a total past MAX_TOTAL, an order twice in
the batch), whose checks come back to be decided on and sent again, with the rejection
record of a refused order: a valid order's body travels only in that record. A batch
without such an order is one call. On a cluster the calls are grouped by
node: one pipeline per node for claims and checks (check_orders.lua), one for the parts
and the bookkeeping (apply_parts.lua), the nodes in parallel.

Limits of the split (cluster only): a check and its part's write are two calls, so two
workers adding within one order of MAX_TOTAL at the same moment could both pass and take
a figure past it; every later check of that figure then refuses it as corrupt (nothing
inexact is ever written on top). Within a batch, a slot's check counts the earlier orders
of the batch as added even if another slot rejects one of them: near the limit this
rejects too much, never too little. Two deliveries of one order running at the same
instant on two workers may finish different parts: the one whose shard part applied says
"counted", the other "duplicate". Should the first die before it settles its message, the
redelivery is a duplicate too: the counters then hold one message more than were sent.
"""
from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Self

import redis
from redis.cluster import RedisCluster

from app.orders import Evaluated
from app.redis_client import connect
from app.settings import Settings
from app.store import lua
from app.store.keys import (BOOKKEEPING_TAG, LAG_KEY, OUTCOMES_KEY, REJECTED_BY_FIELD,
                            REJECTED_ENTRIES, REJECTED_INDEX, REJECTED_TALLY, hash_tag,
                            shard_applied_key, shard_of, user_applied_key)
from app.store.operations import (CONFLICT_REASONS, MAX_TOTAL, ScriptCall, order_ops,
                                   rejection_record)

# How long a WAIT for replicas may block; well below the client's 5 s socket timeout.
WAIT_TIMEOUT_MS = 1000
# The script of each phase: a standalone Redis's one call, a cluster's two.
PHASE_SCRIPTS = {"batch": "apply_batch", "check": "check_orders", "write": "apply_parts"}


class NotReplicated(redis.RedisError):
    """Fewer replicas than REDIS_WAIT_REPLICAS confirmed a batch in time: retry it."""


class TopologyChanged(redis.ConnectionError):
    """A cluster node answered MOVED or ASK: the slots moved; retry once the map is fresh."""


class PartlyApplied(redis.ResponseError):
    """An order's applied parts leave no room for its missing ones under MAX_TOTAL."""


class Contended(redis.ConnectionError):
    """A batch's checks changed at every try (concurrent writers): retry it."""


class Writer:
    """Exactly-once writes of the aggregates, on a standalone Redis or a cluster."""

    def __init__(self, client: redis.Redis | RedisCluster, settings: Settings | None = None):
        settings = settings or Settings()
        self.redis = client
        self.cluster = isinstance(client, RedisCluster)
        # The claim / check / parts protocol, call by call; a standalone Redis runs the
        # same pieces composed in one call unless this is set (tests of each step set it).
        self.phased = self.cluster
        self.shards = settings.redis_shards
        self.window_seconds = settings.dedup_window_days * 86400
        self.wait_replicas = settings.redis_wait_replicas
        self.retention_seconds = settings.rejected_retention_days * 86400
        self.rejected_caps = {"max_records": settings.rejected_max_records,
                              "max_bytes": settings.rejected_max_bytes}
        self.max_body_bytes = settings.max_order_bytes
        self._scripts = {phase: lua.register(client, name)
                         for phase, name in PHASE_SCRIPTS.items()}
        self._nodes = ThreadPoolExecutor(max_workers=8) if self.cluster else None

    @classmethod
    def from_url(cls, url: str, settings: Settings | None = None, **options) -> Self:
        """One on a new client for the Redis URL (a cluster node: a cluster client)."""
        options.setdefault("socket_timeout", 5)
        options.setdefault("socket_connect_timeout", 5)
        return cls(connect(url, decode_responses=True, **options), settings)

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        """One on REDIS_URL with the settings' retention, body limit and WAIT."""
        return cls.from_url(settings.redis_url, settings)

    def user_shard(self, user_id: str) -> int:
        """The shard holding a user's share of the totals and rankings."""
        return shard_of(user_id, self.shards)

    def product_shard(self, product_id: str) -> int:
        """The shard holding a product's hash and rankings."""
        return shard_of(product_id, self.shards)

    def applied_keys(self, fingerprint: str) -> list[str]:
        """The applied sets a counted order with this fingerprint is named in (migrations)."""
        user_id, _, _, lines = json.loads(fingerprint)
        products = sorted({self.product_shard(product_id) for product_id, _, _ in lines})
        return [user_applied_key(user_id),
                shard_applied_key(self.user_shard(user_id), "users"),
                *(shard_applied_key(j, "products") for j in products)]

    def apply(self, evaluated: list[Evaluated]) -> list[str]:
        """Count the orders and record the rejections of a batch, each order exactly once.

        Returns one outcome per item, in order: counted, duplicate, conflict or rejected
        (an order that would take a total past MAX_TOTAL is rejected too). With
        REDIS_WAIT_REPLICAS it raises NotReplicated when too few replicas confirmed.
        """
        valid = [e for e in evaluated if e.order]
        orders = [order_ops(e.order, self.shards) for e in valid]
        rejections = [rejection_record(r.message_id, r.kind, e.body, r.order_id, r.reasons,
                                       self.max_body_bytes)
                      for e in evaluated if (r := e.rejection)]
        oldest = min((int(e.incoming.sent_at.timestamp() * 1000)
                      for e in evaluated if e.incoming.sent_at), default=0)
        book = self._book(rejections, oldest)
        if self.phased:
            outcomes = self._apply_phased(orders, book, valid)
        else:
            outcomes = self._apply_batch(orders, book, valid)
        by_order = iter(outcomes)
        return [next(by_order) if e.order else "rejected" for e in evaluated]

    def _limits(self) -> dict:
        return {"now": time.time(), "max_total": MAX_TOTAL, "retention": self.retention_seconds,
                "window": self.window_seconds}

    def _book(self, rejections: list[dict], oldest_sent_ms: int) -> dict:
        return {"kind": "book", "rejections": rejections, "oldest_sent_ms": oldest_sent_ms,
                **self.rejected_caps,
                "keys": {"outcomes": OUTCOMES_KEY, "index": REJECTED_INDEX,
                         "entries": REJECTED_ENTRIES, "tally": REJECTED_TALLY,
                         "by_field": REJECTED_BY_FIELD, "lag": LAG_KEY}}

    def _apply_batch(self, orders: list[dict], book: dict, valid: list[Evaluated]) -> list[str]:
        """The batch in one call, and the orders it left out in more.

        apply_batch.lua applies the orders the protocol alone settles (new, or redelivered,
        and fitting) and leaves out any other, sending back its checks; verdict_of decides
        on them and they go again with their verdicts (and the records of those refused:
        only these bodies are ever shipped).
        """
        outcomes: list[str] = [""] * len(orders)
        pending = list(range(len(orders)))
        for _ in range(len(orders) + 2):
            call = ScriptCall()
            payload = {**self._limits(), "orders": call.bind([orders[i] for i in pending]),
                       "book": call.bind(book)}
            [(done, left_out)] = self._run_calls("batch", [(call.keys, payload)], writes=True)
            for i, outcome in zip(pending, done):
                outcomes[i] = outcome
            if not left_out:
                return outcomes
            left = []
            for k, checks in json.loads(left_out):
                i = pending[k]
                (state, seen), *statuses = checks
                verdict = verdict_of(orders[i]["claim"]["order_id"], state, seen, statuses)
                decided = {"checks": checks, "outcome": verdict["outcome"]}
                if "reasons" in verdict:
                    decided["record"] = self._order_record(valid[i], verdict)
                orders[i] = {**orders[i], "decided": decided}
                left.append(i)
            # The messages refused before Redis and the lag are written: only the left out go.
            pending, book = left, self._book([], 0)
        raise Contended("the batch's checks changed at every try; retry it")

    def _order_record(self, evaluated: Evaluated, verdict: dict) -> dict:
        """The rejection record of an order refused by Redis: a conflict or a total too large."""
        conflict = verdict["outcome"] == "conflict"
        return rejection_record(evaluated.incoming.message_id,
                                "conflict" if conflict else "invalid", evaluated.body,
                                evaluated.order.order_id, verdict["reasons"],
                                self.max_body_bytes, verdict.get("first_seen", ""))

    def _apply_phased(self, orders: list[dict], book: dict, valid: list[Evaluated]
                      ) -> list[str]:
        """The claim / check / parts protocol of the module docstring, call by call."""
        # 1. Claims and checks, one call per slot.
        steps = [(i, None, o["claim"]) for i, o in enumerate(orders)]
        steps += [(i, j, part) for i, o in enumerate(orders) for j, part in enumerate(o["parts"])]
        replies = self._run_slots("check", steps, writes=True, keep_errors=True)
        failed = [r for r in replies if isinstance(r, Exception)]
        if failed:
            # Nothing was applied: take back the claims this attempt made, then fail.
            ours = [op for (_, j, op), r in zip(steps, replies)
                    if j is None and not isinstance(r, Exception) and r[0] == "new"]
            if ours:
                self._run_slots("write", [(None, op) for op in ours], writes=True)
            raise failed[0]
        claims = {i: replies[n] for n, (i, j, _) in enumerate(steps) if j is None}
        checks = {(i, j): replies[n] for n, (i, j, _) in enumerate(steps) if j is not None}

        verdicts, todo, drops, first_of = [], [], [], {}
        for i, o in enumerate(orders):
            claim = o["claim"]
            state, seen = claims[i]
            statuses = [checks[i, j] for j in range(len(o["parts"]))]
            earlier = first_of.setdefault(claim["order_id"], i)
            if earlier != i and orders[earlier]["claim"]["fp"] == claim["fp"]:
                # The same order twice in one batch: the first one decides.
                verdict = dict(verdicts[earlier])
                if verdict["outcome"] == "counted":
                    verdict = {"outcome": "duplicate"}
            else:
                verdict = verdict_of(claim["order_id"], state, seen, statuses)
                if verdict["outcome"] == "rejected":
                    drops.append(claim)  # nothing of it was applied: the id is free again
                elif verdict["outcome"] == "counted":
                    todo += [(i, part) for part, (status, _) in zip(o["parts"], statuses)
                             if status == "fits"]
            verdicts.append(verdict)

        # 2. The parts, the dropped claims and the bookkeeping, one call per slot.
        for i, verdict in enumerate(verdicts):
            if verdict.get("reasons"):
                book["rejections"].append(self._order_record(valid[i], verdict))
        duplicates = sum(v["outcome"] == "duplicate" for v in verdicts)
        steps = [(i, part) for i, part in todo] + [(None, claim) for claim in drops]
        applied = self._run_slots("write", steps, writes=True, book=book, duplicates=duplicates)
        sent: dict[int, set[str]] = {}
        now: dict[int, set[str]] = {}
        for (i, part), now_applied in zip(steps, applied):
            if i is not None:
                sent.setdefault(i, set()).add(part["kind"])
                if now_applied:
                    now.setdefault(i, set()).add(part["kind"])
        outcomes = [v["outcome"] for v in verdicts]
        late = 0
        for i, kinds in sent.items():
            # "counted" is the delivery's whose shard part (it moves the counter) applied;
            # one that another delivery overtook between its checks and its parts, on
            # some part or all, is a duplicate.
            if not ("shard" in now.get(i, ()) if "shard" in kinds else now.get(i)):
                outcomes[i] = "duplicate"
                late += 1
        if late:
            self._run_slots("write", [], writes=True, book=self._book([], 0), duplicates=late)
        return outcomes

    def _run_slots(self, phase: str, steps: list[tuple], writes: bool, book: dict | None = None,
                   duplicates: int = 0, keep_errors: bool = False) -> list:
        """Run the steps' ops grouped into one call per slot; one reply per step, in order."""
        by_tag: dict[str, list[int]] = {}
        for n, (*_, op) in enumerate(steps):
            by_tag.setdefault(hash_tag(next(iter(op["keys"].values()))), []).append(n)
        if book is not None:
            by_tag.setdefault(BOOKKEEPING_TAG, [])
        calls, order = [], []
        for tag, members in by_tag.items():
            call = ScriptCall()
            payload = {**self._limits(),
                       "ops": call.bind([steps[n][-1] for n in members])}
            if tag == BOOKKEEPING_TAG and book is not None:
                payload["book"], payload["duplicates"] = call.bind(book), duplicates
            calls.append((call.keys, payload))
            order.append(members)
        replies = [None] * len(steps)
        for members, reply in zip(order, self._run_calls(phase, calls, writes, keep_errors)):
            if isinstance(reply, Exception):
                reply = [reply] * len(members)
            elif phase == "check":
                reply = json.loads(reply)
            for n, value in zip(members, reply or []):
                replies[n] = value
        return replies

    def _run_calls(self, phase: str, calls: list[tuple[list[str], dict]], writes: bool,
                   keep_errors: bool = False) -> list:
        """Run script calls: one pipeline per node, the nodes in parallel; replies in order.

        A call's error is raised, or with keep_errors left in its place.
        """
        groups: dict[str, tuple[redis.Redis, list[int]]] = {}
        for n, (keys, _) in enumerate(calls):
            client = self._client_for(keys[0])
            groups.setdefault(_node_name(client), (client, []))[1].append(n)
        jobs = [(client, [calls[n] for n in members]) for client, members in groups.values()]
        if self._nodes and len(jobs) > 1:
            results = list(self._nodes.map(
                lambda job: self._pipeline_calls(*job, phase, writes), jobs))
        else:
            results = [self._pipeline_calls(*job, phase, writes) for job in jobs]
        replies = [None] * len(calls)
        for (_, members), node_replies in zip(groups.values(), results):
            for n, reply in zip(members, node_replies):
                replies[n] = reply
        if not keep_errors:
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        return replies

    def _client_for(self, key: str) -> redis.Redis:
        if not self.cluster:
            return self.redis
        node = self.redis.nodes_manager.get_node_from_slot(self.redis.keyslot(key))
        return self.redis.get_redis_connection(node)

    def _pipeline_calls(self, client: redis.Redis, calls: list, phase: str, writes: bool
                        ) -> list:
        """One node's script calls in one pipeline (then WAIT): their replies, or raise."""
        wait = self.wait_replicas and writes
        # WAIT counts the replicas holding this connection's writes, so it goes on the
        # scripts' connection: all in one pipeline, one round trip.
        after = [("WAIT", self.wait_replicas, WAIT_TIMEOUT_MS)] if wait else []
        try:
            replies = lua.evalsha_each(client, self._scripts[phase], [
                (keys, [json.dumps(payload, ensure_ascii=False, separators=(",", ":"))])
                for keys, payload in calls], *after)
        except (redis.ConnectionError, redis.TimeoutError):
            self._refresh_topology()
            raise
        confirmed = replies.pop() if wait else None
        for reply in replies + [confirmed]:
            if isinstance(reply, (redis.exceptions.AskError, redis.exceptions.TryAgainError,
                                  redis.exceptions.ClusterDownError)):
                self._refresh_topology()
                name = type(reply).__name__.removesuffix("Error").upper()
                raise TopologyChanged(f"{name} {reply}: the cluster's slots changed; retry")
        if wait and isinstance(confirmed, Exception):
            raise confirmed
        failed = any(isinstance(reply, Exception) for reply in replies)
        # Orders left out by apply_batch.lua go in a next call, whose WAIT confirms both.
        more = phase == "batch" and any(isinstance(reply, list) and reply[1] for reply in replies)
        if wait and confirmed < self.wait_replicas and not failed and not more:
            # The calls ran: a retry finds these orders applied and calls them duplicates.
            raise NotReplicated(f"{confirmed} of {self.wait_replicas} replica(s) confirmed "
                                f"the batch within {WAIT_TIMEOUT_MS} ms")
        return replies

    def _refresh_topology(self):
        if self.cluster:
            self.redis.nodes_manager.initialize()


def verdict_of(order_id: str, state: str, seen: str, statuses: list[list[str]]) -> dict:
    """The verdict on an order from its checks: its claim's state and each part's status.

    The one place it is decided, for both ways of applying a batch: {outcome} with reasons
    (and first_seen, the fingerprint counted under the id) when the order is refused.
    """
    if state == "conflict":
        return {"outcome": "conflict", "first_seen": seen, "reasons": CONFLICT_REASONS}
    if any(status == "over" for status, _ in statuses):
        if any(status == "applied" for status, _ in statuses):
            raise PartlyApplied(f"order {order_id} is partly applied and its other parts "
                                "would pass the largest total")
        return {"outcome": "rejected",
                "reasons": next(json.loads(r) for status, r in statuses if status == "over")}
    if all(status == "applied" for status, _ in statuses):
        return {"outcome": "duplicate"}
    return {"outcome": "counted"}


def _node_name(client: redis.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    return f"{kwargs.get('host')}:{kwargs.get('port')}"
