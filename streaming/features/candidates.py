"""Candidate generation for a user's feed. Pure: works on state already read from Redis.

Sources, in priority order (an item found by several keeps the first): the user's own recent
items (re-visits: in e-commerce logs such as OTTO the strongest single signal of the next
interaction), co-visitation of those items, trending items (decayed global popularity: what
is hot now, including items too new for the other lists), the user's top categories, new
items, and all-time popularity. Items the user bought are excluded unless
``exclude_purchased`` is off.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from streaming.features.state import decay


@dataclass(slots=True)
class CandidateReads:
    """What :func:`generate` needs of one user, as read from Redis: ``(item, score)`` lists, best
    first (scores are counts or times, only their order matters)."""

    recent: list[str]  # user's recent items, newest first
    covisit: dict[str, list[tuple[str, float]]]  # recent item -> [(item, count)] best first
    by_category: dict[str, list[tuple[str, float]]]  # category -> [(item, count)] best first
    new_items: list[tuple[str, float]]  # newest first
    popular: list[tuple[str, float]]  # most popular first
    trending: list[tuple[str, float]] = field(default_factory=list)  # hottest first
    purchased: set[str] = field(default_factory=set)


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


def generate(reads: CandidateReads, limit: int, exclude_purchased: bool = True
             ) -> list[tuple[str, str]]:
    """Up to ``limit`` ``(item_id, source)`` pairs."""
    out: dict[str, str] = {}
    skip = reads.purchased if exclude_purchased else set()

    def add(items: Sequence[tuple[str, float]] | Sequence[str], source: str) -> None:
        for entry in items:
            item = entry[0] if isinstance(entry, tuple) else entry
            if len(out) >= limit:
                return
            if item not in out and item not in skip:
                out[item] = source

    add(reads.recent, "recent")
    # Interleave co-visitation lists so that every recent item contributes.
    lists = [reads.covisit.get(i, []) for i in reads.recent]
    for rank in range(max((len(x) for x in lists), default=0)):
        add([x[rank] for x in lists if rank < len(x)], "covisit")
    add(reads.trending, "trending")
    for cat_items in reads.by_category.values():
        add(cat_items, "category")
    add(reads.new_items, "new")
    add(reads.popular, "popular")
    return list(out.items())
