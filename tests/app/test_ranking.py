"""app.ranking against a brute-force sum: on sources in memory, then through Store.ranked."""
from __future__ import annotations

import random
import uuid
from collections import Counter

import pytest
from hypothesis import given, settings as hypothesis_settings, strategies as st
from redis.cluster import RedisCluster

from app import ranking
from app.store import Store

# Few names, so sources share members and totals tie; 'é' and 'u10' test code point order.
members = st.sampled_from(["a", "b", "c", "u1", "u10", "u2", "z", "é", "ab", "B"])
scores = st.integers(min_value=-3, max_value=12)
source = st.dictionaries(members, scores, max_size=10)
sources = st.lists(source, min_size=1, max_size=6)
PROPERTY = hypothesis_settings(max_examples=400, deadline=None)


class MemorySources:
    """Sorted sets in memory, listed as ZREVRANGE lists them (ties in descending member
    order), recording every read."""

    def __init__(self, sets: list[dict[str, int]], bounds: dict[int, dict[str, int]] = {}):
        self.sets = sets
        # A bounded source's pages list its bounds; its lookups give its exact scores.
        self.listed = [sorted(bounds.get(i, s).items(), key=lambda item: (item[1], item[0]),
                              reverse=True) for i, s in enumerate(sets)]
        self.reads: list[int] = []  # entries asked for per page read or lookup
        self.rounds = 0

    def pages(self, reads):
        self.rounds += 1
        self.reads += [stop - start + 1 for _, start, stop in reads]
        return [self.listed[s][start:stop + 1] for s, start, stop in reads]

    def scores(self, lookups):
        self.rounds += 1
        self.reads += [len(found) for _, found in lookups]
        return [[self.sets[s].get(m) for m in found] for s, found in lookups]


def brute_force(sets, ranked_by, second, n):
    """Sum every set, sort by (-total, member), keep n; the second totals alongside."""
    totals, seconds = {}, {}
    for i in ranked_by:
        for member, score in sets[i].items():
            totals[member] = totals.get(member, 0) + score
    for i in second:
        for member, score in sets[i].items():
            seconds[member] = seconds.get(member, 0) + score
    top = sorted(totals.items(), key=lambda item: (-item[1], item[0]))[:n]
    return [(member, total, seconds.get(member, 0)) for member, total in top]


@PROPERTY
@given(sources, st.integers(min_value=1, max_value=12), st.integers(min_value=1, max_value=4))
def test_top_of_a_sum_is_the_brute_force_one(sets, n, page_size):
    memory = MemorySources(sets + sets[::-1])
    p = len(sets)
    got = ranking.ranked(memory, range(p), range(p, 2 * p), n, page_size=page_size)
    assert got == brute_force(memory.sets, range(p), range(p, 2 * p), n)
    assert max(memory.reads, default=0) <= page_size


@st.composite
def bounded_source(draw):
    """(exact scores, upper bounds): each member's bound >= its score (0 when absent),
    and some members bounded that are absent."""
    exact = draw(source)
    bounds = {m: max(score, 0) + draw(st.integers(0, 4)) for m, score in exact.items()}
    bounds.update({m: draw(st.integers(0, 12)) for m in draw(st.sets(members, max_size=3))
                   if m not in exact})
    return exact, bounds


@PROPERTY
@given(st.lists(st.tuples(bounded_source(), st.booleans()), min_size=1, max_size=5),
       st.integers(min_value=1, max_value=12), st.integers(min_value=1, max_value=4))
def test_sources_read_through_upper_bounds_rank_exactly(drawn, n, page_size):
    sets = [exact for (exact, _), _ in drawn]
    bounded = {i for i, (_, is_bounded) in enumerate(drawn) if is_bounded}
    memory = MemorySources(sets, {i: drawn[i][0][1] for i in bounded})
    p = len(sets)
    got = ranking.top_of_sum(memory, range(p), n, page_size=page_size, bounded=bounded)
    assert got == [(m, t) for m, t, _ in brute_force(sets, range(p), [], n)]


@PROPERTY
@given(st.lists(st.lists(st.tuples(bounded_source(), st.booleans()), min_size=1, max_size=3),
                min_size=1, max_size=4),
       st.integers(min_value=1, max_value=12), st.integers(min_value=1, max_value=4))
def test_groups_of_sources_rank_as_one_sum_of_every_source(drawn, n, page_size):
    # Each group's members are its own (a user lives in one shard): prefixed by the group.
    def own(g, scores):
        return {f"{g}{m}": score for m, score in scores.items()}

    sets, listed, groups = [], {}, []
    for g, group in enumerate(drawn):
        ranked_by = []
        for (exact, bounds), is_bounded in group:
            if is_bounded:
                listed[len(sets)] = own(g, bounds)
            ranked_by.append(len(sets))
            sets.append(own(g, exact))
        second = range(len(sets), len(sets) + len(group))
        sets += [sets[i] for i in reversed(ranked_by)]
        groups.append((ranked_by, second))
    memory = MemorySources(sets, listed)
    got = ranking.ranked_groups(memory, groups, n, page_size=page_size, bounded=set(listed))
    assert got == brute_force(sets, [i for r, _ in groups for i in r],
                              [i for _, c in groups for i in c], n)
    assert max(memory.reads, default=0) <= page_size


def test_groups_share_the_nth_total_so_a_group_without_the_top_stops_early():
    # The 5 leaders live in group 0; 7 other groups of 2 sources hold 1,000 lesser members
    # each, whose two scores run opposite ways: alone, such a group is read deep.
    leaders = [{f"lead{i}": 1000 - i for i in range(5)}]
    others = [[{f"g{g}m{i:04d}": (i if s else 999 - i) // 4 for i in range(1000)}
               for s in range(2)] for g in range(1, 8)]
    sets = [*leaders, *(s for group in others for s in group)]
    groups = [([0], [])] + [(range(1 + 2 * k, 3 + 2 * k), []) for k in range(7)]
    memory = MemorySources(sets)
    top = ranking.ranked_groups(memory, groups, 5, page_size=10)
    assert top == [(f"lead{i}", 1000 - i, 0) for i in range(5)]
    assert max(memory.reads) <= 10
    # Ranked group by group, each of the 7 would have had to find its own top 5.
    one_by_one = MemorySources(sets)
    for ranked_by, _ in groups[1:]:
        ranking.top_of_sum(one_by_one, ranked_by, 5, page_size=10)
    assert sum(one_by_one.reads) > 20 * sum(memory.reads)
    assert one_by_one.rounds > 20 * memory.rounds


@PROPERTY
@given(source, st.integers(min_value=1, max_value=12), st.integers(min_value=1, max_value=4))
def test_one_source_ranks_as_that_sorted_set(one, n, page_size):
    memory = MemorySources([one, one])
    assert (ranking.ranked(memory, [0], [1], n, page_size=page_size)
            == brute_force(memory.sets, [0], [1], n))


def test_empty_sources_and_n_beyond_the_members():
    memory = MemorySources([{}, {"b": 2, "a": 2}, {}, {"a": 1}])
    assert ranking.ranked(memory, [0, 1], [2, 3], 10) == [("a", 2, 1), ("b", 2, 0)]
    assert ranking.ranked(MemorySources([{}, {}]), [0, 1], [0, 1], 3) == []
    assert ranking.ranked_groups(MemorySources([]), [], 3) == []


def test_a_clear_leader_is_found_without_reading_everything():
    # 20 sources of 1,000 members; "lead" scores 1,000 in each, the rest at most 999 - rank.
    sets = [{**{f"m{i:04d}": (i * 7 + s) % 990 for i in range(1000)}, "lead": 1000}
            for s in range(20)]
    memory = MemorySources(sets)
    assert ranking.top_of_sum(memory, range(20), 1, page_size=10) == [("lead", 20_000)]
    expected = brute_force(sets, range(20), [], 5)
    assert [(m, t) for m, t, _ in expected] == ranking.top_of_sum(MemorySources(sets),
                                                                  range(20), 5, page_size=50)
    # The first page of each source (and lookups of what it held) settle it.
    assert memory.rounds == 2 and max(memory.reads) <= 10


def test_n_below_one_is_refused():
    with pytest.raises(ValueError, match="n >= 1"):
        ranking.top_of_sum(MemorySources([{}]), [0], 0)


@pytest.fixture(params=["standalone", "cluster"])
def redis_store(request):
    """A Store on the session's redis-server, or on its 3-primary cluster."""
    if request.param == "standalone":
        yield Store.from_url(request.getfixturevalue("redis_server").url)
        return
    cluster = request.getfixturevalue("redis_cluster")
    yield Store(cluster.client(decode_responses=True))


def test_store_ranks_a_sum_of_sets_over_many_pages_exactly(redis_store):
    rng = random.Random(11)
    prefix = f"rank-test:{uuid.uuid4().hex[:8]}"
    keys = [f"{prefix}:by:{i}" for i in range(4)]
    second_keys = [f"{prefix}:second:{i}" for i in range(4)]
    # 1,500 users, ~1,200 per set: pages (250) and lookups (100) are crossed, ties abound.
    sets = [{f"U{u:04d}": rng.randint(0, 40) for u in rng.sample(range(1500), 1200)}
            for _ in keys]
    seconds = [{member: rng.randint(1, 5) for member in s} for s in sets]
    client = redis_store.redis
    pipe = client.pipeline(transaction=False)
    for key, mapping in zip([*keys, *second_keys], [*sets, *seconds]):
        pipe.zadd(key, mapping)
    pipe.execute()
    try:
        if isinstance(client, RedisCluster):  # the sets really sit on several nodes
            assert len({client.get_node_from_key(key).name for key in keys}) > 1
        for n in (1, 10, 100):
            assert redis_store.ranked(keys, second_keys, n) == brute_force(
                [*sets, *seconds], range(4), range(4, 8), n)
        # One set (the ranking script) agrees with the sum of that set alone.
        assert redis_store.ranked(keys[:1], second_keys[:1], 10) == brute_force(
            [sets[0], seconds[0]], [0], [1], 10)
    finally:
        for key in [*keys, *second_keys]:
            client.delete(key)


def test_store_reads_days_through_their_month_exactly(redis_store):
    rng = random.Random(12)
    prefix = f"rank-test:{uuid.uuid4().hex[:8]}"
    # Days 1-3 of a month read through the month (their sum, plus users of other days),
    # beside a whole other month; 2,000 users, scores that tie.
    days = [{f"U{u:04d}": rng.randint(1, 30) for u in rng.sample(range(2000), 700)}
            for _ in range(3)]
    month = Counter({f"U{u:04d}": rng.randint(1, 30) for u in rng.sample(range(2000), 900)})
    for day in days:
        month.update(day)
    other = {f"U{u:04d}": rng.randint(1, 60) for u in rng.sample(range(2000), 800)}
    sets = [*days, other]
    seconds = [{member: rng.randint(1, 3) for member in s} for s in sets]
    keys = [f"{prefix}:by:{i}" for i in range(4)]
    second_keys = [f"{prefix}:second:{i}" for i in range(4)]
    month_key = f"{prefix}:month"
    client = redis_store.redis
    pipe = client.pipeline(transaction=False)
    for key, mapping in zip([*keys, *second_keys, month_key], [*sets, *seconds, month]):
        pipe.zadd(key, mapping)
    pipe.execute()
    try:
        for n in (1, 10, 100):
            assert redis_store.ranked(keys, second_keys, n, [month_key] * 3 + [None]) == \
                brute_force([*sets, *seconds], range(4), range(4, 8), n)
    finally:
        for key in [*keys, *second_keys, month_key]:
            client.delete(key)
