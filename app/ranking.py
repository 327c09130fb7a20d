"""Exact top n over the sum of several sorted sources, reading bounded pieces only.

Fagin's threshold algorithm: each round reads the next page of every source in
descending score order, then looks up the exact total of every member seen for the first
time in the sources where it was not on a page. A member never seen has, in each source,
at most the last score read there (or is absent: 0), so their sum is a bound on its
total; once the n-th exact total is above that bound, nothing unread can enter the top n
and the answer is exact. A new member whose own bound is already below the n-th total is
dropped without a lookup: the n-th total only grows, the bounds only shrink.

A source may be `bounded`: its pages list a superset of its members by an upper bound of
their score there (0 when absent), e.g. a month's ranking for some of its days; its exact
scores come from lookups only. Many small sources then read as one.

Sources may come in groups whose members are their own (a shard's sets: a user lives in
one shard), a member's total summing its group's sources. `ranked_groups` ranks them in
one pass: a round's reads of every group go in one batch, and the groups share the n-th
total, so a group holding little of the top is read no deeper than that total needs.

The order is the one of a Redis ranking: higher total first, equal totals by member in
ascending (code point = UTF-8 byte) order. A member absent from a source counts 0 there,
as in ZUNIONSTORE. The sources are abstract (`Sources`), so this module knows no Redis;
every read is one page or one lookup of at most a page of members, batched per round.
"""
from __future__ import annotations

import heapq
from collections import defaultdict
from typing import Collection, Protocol, Sequence

# Entries per page read, and members per lookup: each Redis command stays O(log N + 250).
# Measured on a 300,000-member sorted set (2 busy cores): ZREVRANGE of 250 entries p50
# 0.13 ms, ZMSCORE of 100 members p50 0.09 ms. Pages set the rounds (round trips); the
# lookups of a round go in one pipeline whatever their size.
PAGE_SIZE = 250
LOOKUP_SIZE = 100


class Sources(Protocol):
    """Sorted sources numbered 0.., read in batches (one round trip per batch)."""

    def pages(self, reads: Sequence[tuple[int, int, int]]) -> list[list[tuple[str, float]]]:
        """For each (source, start, stop): its entries at ranks start..stop (inclusive),
        highest score first, as (member, score)."""

    def scores(self, lookups: Sequence[tuple[int, Sequence[str]]]) -> list[list[float | None]]:
        """For each (source, members): each member's score there, None when absent."""


def _order(item: tuple[str, float]) -> tuple[float, str]:
    """Sort key of a ranking: highest total first, then ascending member."""
    return -item[1], item[0]


def _lookup(sources: Sources, wanted: dict[int, list[str]], size: int
            ) -> dict[int, dict[str, float | None]]:
    """Scores of members per source, in lookups of at most size members, one batch."""
    lookups = [(source, members[i:i + size])
               for source, members in wanted.items() for i in range(0, len(members), size)]
    found: dict[int, dict[str, float | None]] = {source: {} for source in wanted}
    if lookups:
        for (source, members), scores in zip(lookups, sources.scores(lookups)):
            found[source].update(zip(members, scores))
    return found


def top_of_sum(sources: Sources, ranked_by: Sequence[int], n: int,
               page_size: int = PAGE_SIZE, bounded: Collection[int] = ()
               ) -> list[tuple[str, float]]:
    """The n best (member, total) of the summed sources ranked_by, in ranking order."""
    return [(member, total) for _, member, total in
            _top_of_groups(sources, [ranked_by], n, page_size, bounded)]


def _top_of_groups(sources: Sources, groups: Sequence[Sequence[int]], n: int,
                   page_size: int, bounded: Collection[int]) -> list[tuple[int, str, float]]:
    """The n best (group, member, total), a member's total summing its group's sources.

    A member lives in one group (a shard), so the groups share one n-th total: a group
    stops being read as soon as nothing unread in it can pass that, however little of the
    top it holds.
    """
    if n < 1 or page_size < 1:
        raise ValueError("top_of_sum needs n >= 1 and page_size >= 1")
    group_of = {source: g for g, members in enumerate(groups) for source in members}
    read = dict.fromkeys(group_of, 0)  # entries read so far per source
    # The top is spread over the groups: their first pages share one page's worth of
    # entries, and each round doubles them up to a page, so the first round's lookups
    # (every member it meets, before there is an n-th total) stay those of one group.
    size = dict.fromkeys(read, -(-page_size // max(len(groups), 1)))
    last: dict[int, float] = {}  # the last score read per source
    open_sources = list(read)  # not read to the end yet
    settled: set[tuple[int, str]] = set()  # exact total known, or proven below the n-th
    best: list[tuple[int, str, float]] = []  # the n best exact totals so far
    nth: tuple[float, str] | None = None  # order key of the n-th exact total
    while open_sources:
        reads = [(source, read[source], read[source] + size[source] - 1)
                 for source in open_sources]
        seen: dict[tuple[int, str], dict[int, float]] = {}  # new this round: source -> score
        for (source, _, _), page in zip(reads, sources.pages(reads)):
            read[source] += len(page)
            if page:
                last[source] = page[-1][1]
            if len(page) < size[source]:
                open_sources.remove(source)
            size[source] = min(2 * size[source], page_size)
            for member, score in page:
                if (group_of[source], member) not in settled:
                    seen.setdefault((group_of[source], member), {})[source] = score
        # What a source not read to the end may still hold for a member not on its pages;
        # a source read to the end holds nothing more (absent: 0).
        ceiling = {source: max(last[source], 0) for source in open_sources}
        unread = dict.fromkeys(range(len(groups)), 0.0)
        open_in: dict[int, list[int]] = defaultdict(list)  # group -> its open sources
        for source, score in ceiling.items():
            unread[group_of[source]] += score
            open_in[group_of[source]].append(source)
        wanted: dict[int, list[str]] = defaultdict(list)  # source -> members to look up
        asked: dict[tuple[int, str], list[int]] = {}  # member -> sources it is looked up in
        for (g, member), known in seen.items():
            bound = unread[g] + sum(known.values()) - sum(ceiling.get(s, 0) for s in known)
            if nth is not None and _order((member, bound)) > nth:
                settled.add((g, member))  # its bound only shrinks, the n-th only grows
                continue
            asked[g, member] = [*(s for s in open_in[g] if s not in known),
                                *(s for s in known if s in bounded)]
            for source in asked[g, member]:
                wanted[source].append(member)
        found = _lookup(sources, wanted, min(page_size, LOOKUP_SIZE))
        new_totals = []
        for (g, member), looked_up in asked.items():
            listed = [score for s, score in seen[g, member].items() if s not in bounded]
            scores = [found[s][member] for s in looked_up if found[s][member] is not None]
            if listed or scores:  # only listed by bounds, and in no source: not a member
                new_totals.append((g, member, sum(listed) + sum(scores)))
        settled.update(asked)
        best = heapq.nsmallest(n, [*best, *new_totals], key=_entry_order)
        if len(best) == n:
            nth = _entry_order(best[-1])
            # An unread member could tie the n-th total with a smaller name: go on then.
            open_sources = [s for s in open_sources if unread[group_of[s]] >= -nth[0]]
    return best


def _entry_order(entry: tuple[int, str, float]) -> tuple[float, str]:
    return _order(entry[1:])


def ranked(sources: Sources, ranked_by: Sequence[int], second: Sequence[int], n: int,
           page_size: int = PAGE_SIZE, bounded: Collection[int] = ()
           ) -> list[tuple[str, float, float]]:
    """top_of_sum of ranked_by, each with its total over the `second` sources too."""
    return ranked_groups(sources, [(ranked_by, second)], n, page_size, bounded)


def ranked_groups(sources: Sources, groups: Sequence[tuple[Sequence[int], Sequence[int]]],
                  n: int, page_size: int = PAGE_SIZE, bounded: Collection[int] = ()
                  ) -> list[tuple[str, float, float]]:
    """ranked() over groups of (ranked_by, second) sources, each member in one group."""
    top = _top_of_groups(sources, [ranked_by for ranked_by, _ in groups], n, page_size,
                         bounded)
    seconds = [list(dict.fromkeys(second)) for _, second in groups]
    wanted: dict[int, list[str]] = defaultdict(list)
    for g, member, _ in top:
        for source in seconds[g]:
            wanted[source].append(member)
    found = _lookup(sources, wanted, min(page_size, LOOKUP_SIZE))
    return [(member, total, sum(found[s][member] or 0 for s in seconds[g]))
            for g, member, total in top]
