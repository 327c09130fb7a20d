"""app.ranking against a brute-force sum, on sources held in memory in Redis's order."""
from __future__ import annotations

import pytest
from hypothesis import given, settings as hypothesis_settings, strategies as st

from app import ranking

# Few names, so sources share members and totals tie; 'é' and 'u10' test code point order.
members = st.sampled_from(["a", "b", "c", "u1", "u10", "u2", "z", "é", "ab", "B"])
scores = st.integers(min_value=-3, max_value=12)
source = st.dictionaries(members, scores, max_size=10)
sources = st.lists(source, min_size=1, max_size=6)
PROPERTY = hypothesis_settings(max_examples=400, deadline=None)


class MemorySources:
    """Sorted sets in memory, listed as ZREVRANGE lists them (ties in descending member
    order), recording every read."""

    def __init__(self, sets: list[dict[str, int]]):
        self.sets = sets
        self.listed = [sorted(s.items(), key=lambda item: (item[1], item[0]), reverse=True)
                       for s in sets]
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
