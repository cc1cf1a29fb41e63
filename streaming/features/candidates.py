"""Candidate generation for a user's feed. Pure: works on state already read from Redis.

Sources, in priority order (an item found by several keeps the first): the user's own recent
items (re-visits: in e-commerce logs such as OTTO the strongest single signal of the next
interaction), the user's own items by decayed interaction (``again``: repeat purchases, about
41% of a returning UCI customer's next-week items), co-visitation of the recent items, the
user's neighbour list (``neighbours``: items of users who interact alike, and their own, by the
neighbour job's score, :mod:`streaming.serving.neighbour_job`), the retriever's nearest items
(``retrieval``: the user tower's vector against the published item vectors, when the model has
a retriever), trending items (decayed global popularity: what is hot now, including items too
new for the other lists), the user's top categories, new items, and all-time popularity.

The repeat policy (``serving.repeat``, :data:`REPEAT_POLICIES`) says which of the user's own
items may appear at all: ``allow`` (the model decides how high a repeat ranks),
``exclude_purchased`` or ``exclude_interacted``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain, filterfalse, islice, zip_longest
from operator import itemgetter
from typing import TYPE_CHECKING

from streaming.features.state import decay

if TYPE_CHECKING:
    from streaming.settings import ServingSettings


@dataclass(slots=True)
class CandidateReads:
    """What :func:`generate` needs of one user, as read from Redis: ``(item, score)`` lists, best
    first (scores are counts or times, only their order matters)."""

    recent: list[str]  # user's recent items, newest first
    # seed -> [(item, count)] best first; seeds: the recent items, then (serving.covisit_own_seeds)
    # the user's most interacted own items
    covisit: dict[str, list[tuple[str, float]]]
    by_category: dict[str, list[tuple[str, float]]]  # category -> [(item, count)] best first
    new_items: list[tuple[str, float]]  # newest first
    popular: list[tuple[str, float]]  # most popular first
    trending: list[tuple[str, float]] = field(default_factory=list)  # hottest first
    purchased: set[str] = field(default_factory=set)
    # The user's own items, most interacted first (decayed weight): the "again" source.
    again: list[tuple[str, float]] = field(default_factory=list)
    interacted: set[str] = field(default_factory=set)  # every item in the user x item state
    # The neighbour list (item, score), best first; empty until the neighbour job has run.
    neighbours: list[tuple[str, float]] = field(default_factory=list)
    # The retriever's nearest items (item, inner product), best first; empty without one.
    retrieved: list[tuple[str, float]] = field(default_factory=list)


REPEAT_POLICIES = ("allow", "exclude_purchased", "exclude_interacted")


def excluded_items(reads: CandidateReads, policy: str) -> set[str]:
    """The user's items that ``policy`` keeps out of the feed (see the module docstring)."""
    if policy == "allow":
        return set()
    if policy == "exclude_purchased":
        return set(reads.purchased)
    if policy == "exclude_interacted":
        return set(reads.interacted) | set(reads.purchased) | set(reads.recent)
    raise ValueError(f"unknown repeat policy {policy!r}; one of {REPEAT_POLICIES}")


def top_categories(user: Mapping[str, object], at_ms: int, half_life_ms: int, n: int) -> list[str]:
    """The user's ``n`` categories with the highest decayed affinity at ``at_ms``."""
    scores = []
    for name, value in user.items():
        if name.startswith("c.") and name.endswith(".a"):
            cat = name[2:-2]
            ref = user.get(f"c.{cat}.t")
            if ref is not None:
                scores.append((decay(float(value), int(float(ref)), at_ms, half_life_ms), cat))  # type: ignore[arg-type]
    return [cat for _, cat in sorted(scores, reverse=True)[:n]]


@dataclass(frozen=True, slots=True)
class SourceSizes:
    """How many items the scorer takes from each list-backed candidate source (``serving.*``);
    the ingest worker reads the same lists to sample implicit-mode negatives from them."""

    covisit_seeds: int = 5  # recent items whose co-visitation lists give candidates
    covisit_per_item: int = 50
    top_categories: int = 3
    category_candidates: int = 100  # per category
    new_candidates: int = 50
    popular_candidates: int = 200


def source_sizes(s: ServingSettings) -> SourceSizes:
    """The list-backed sources' sizes the serving settings ask for: the one place the scorer
    (candidates) and the ingest worker (negatives from the candidates) take them from."""
    return SourceSizes(covisit_seeds=s.covisit_seeds, covisit_per_item=s.covisit_per_item,
                       top_categories=s.top_categories, category_candidates=s.category_candidates,
                       new_candidates=s.new_candidates, popular_candidates=s.popular_candidates)


def source_seeds(user: Mapping[str, object], recent_items: Sequence[str], at_ms: int,
                 half_life_ms: int, sizes: SourceSizes) -> tuple[list[str], list[str]]:
    """``(co-visitation seeds, categories)``: the user's newest distinct recent items whose
    co-visitation lists, and the top categories whose item lists, give the user's candidates.
    ``recent_items`` newest first; the categories by decayed affinity at ``at_ms``."""
    seeds = list(dict.fromkeys(recent_items))[:sizes.covisit_seeds]
    return seeds, top_categories(user, at_ms, half_life_ms, sizes.top_categories)


def found_before_retrieval(reads: CandidateReads, covisit_limit: int | None = None) -> int:
    """At most how many distinct items the sources ahead of the retriever's (recent, again,
    co-visitation within ``covisit_limit``, neighbours) give: the scorer asks the retriever for that many
    more than its own budget, so that its nearest items already found by those sources do not
    crowd out the new ones it is there to add."""
    covisit = sum(map(len, reads.covisit.values()))
    if covisit_limit is not None:
        covisit = min(covisit, covisit_limit)
    return len(set(reads.recent)) + len(reads.again) + covisit + len(reads.neighbours)


def generate(reads: CandidateReads, limit: int, repeat: str = "allow",
             covisit_limit: int | None = None, retrieval_limit: int | None = None
             ) -> list[tuple[str, str]]:
    """Up to ``limit`` ``(item_id, source)`` pairs, sources in the module docstring's order,
    without the items the repeat policy excludes; at most ``covisit_limit`` from co-visitation
    and ``retrieval_limit`` from the retriever (None: no bound of their own)."""
    out: dict[str, str] = {}
    skip = excluded_items(reads, repeat)
    first = itemgetter(0)

    def add(items: Iterable[str], source: str, cap: int | None = None) -> None:
        room = (limit if cap is None else min(limit, len(out) + cap)) - len(out)
        if room <= 0:
            return
        # Filtered lazily, item by item: each is checked after the ones before it went in, so
        # an item listed twice is added once. (C-level iteration: hundreds of items per user.)
        fresh = filterfalse(out.__contains__, items)
        if skip:
            fresh = filterfalse(skip.__contains__, fresh)
        for item in islice(fresh, room):
            out[item] = source

    add(reads.recent, "recent")
    add(map(first, reads.again), "again")
    # Interleave co-visitation lists so that every seed (recent items first) contributes: every
    # list's first item, then every list's second, ...
    seeds = list(dict.fromkeys([*reads.recent, *reads.covisit]))
    lists = [reads.covisit.get(i, []) for i in seeds]
    add(map(first, filter(None, chain.from_iterable(zip_longest(*lists)))), "covisit",
        covisit_limit)
    add(map(first, reads.neighbours), "neighbours")
    add(map(first, reads.retrieved), "retrieval", retrieval_limit)
    add(map(first, reads.trending), "trending")
    for cat_items in reads.by_category.values():
        add(map(first, cat_items), "category")
    add(map(first, reads.new_items), "new")
    add(map(first, reads.popular), "popular")
    return list(out.items())
