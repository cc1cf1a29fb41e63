"""Top-K ranking metrics, the non-learned baselines and candidate recall. Pure: no I/O.

``recall_at_k`` = hits in the top K / ``min(K, |relevant|)`` (so a user with 40 next
interactions can still reach 1.0, as in the OTTO and RecSys-challenge definitions);
``ndcg_at_k`` uses binary relevance with the same ideal of ``min(K, |relevant|)`` hits.

Baselines: :class:`DecayedPopularity` (global, decayed in event time), :class:`BuyAgain` (the
user's own past items by recency-weighted count, topped up with popular items),
:class:`UserKnn` (the user's and similar users' items, TIFU-KNN style) and
:func:`covisit_ranking`. :class:`CandidateRecall` measures how many of the items users go on to
interact with are among their candidates at all: the ceiling of any ranker of candidates.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streaming.contract.events import Event
from streaming.features.neighbours import UserNeighbours, check_parameters
from streaming.features.state import decay


def recall_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    """Hits in ``ranked[:k]`` / ``min(k, |relevant|)``; ``ValueError`` if ``relevant`` is empty."""
    if not relevant:
        raise ValueError("recall of a user with no relevant items is undefined")
    hits = sum(1 for item in ranked[:k] if item in relevant)
    return hits / min(k, len(relevant))


def ndcg_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    """Binary-relevance NDCG of ``ranked[:k]``, the ideal being ``min(k, |relevant|)`` hits on
    top; ``ValueError`` if ``relevant`` is empty."""
    if not relevant:
        raise ValueError("NDCG of a user with no relevant items is undefined")
    dcg = sum(1.0 / math.log2(pos + 2) for pos, item in enumerate(ranked[:k]) if item in relevant)
    ideal = sum(1.0 / math.log2(pos + 2) for pos in range(min(k, len(relevant))))
    return dcg / ideal


def top_k(items: Sequence[str], scores: np.ndarray, k: int,
          exclude: Collection[str] = ()) -> list[str]:
    """The ``k`` best-scored items not in ``exclude``; ties keep the input order."""
    out = []
    for j in np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable"):
        if items[j] not in exclude:
            out.append(items[j])
            if len(out) == k:
                break
    return out


class DecayedPopularity:
    """Global item popularity with exponential decay in event time (half-life in ms).

    Each event adds its type's weight (view 1, click 3, purchase 10 by default, the weights the
    feature store uses for category affinity)."""

    def __init__(self, half_life_ms: int,
                 weights: Mapping[str, float] | None = None) -> None:
        self.half_life_ms = half_life_ms
        self.weights = dict(weights or {"view": 1.0, "click": 3.0, "purchase": 10.0})
        self._score: dict[str, float] = {}
        self._ref_ms: int | None = None  # scores are referenced to this time

    def update(self, events: Iterable[Event]) -> None:
        """Add each event's weight to its item, decayed to a common reference time; event types
        without a weight count 0."""
        for e in events:
            if self._ref_ms is None:
                self._ref_ms = e.ts
            if e.ts > self._ref_ms:
                factor = decay(1.0, self._ref_ms, e.ts, self.half_life_ms)
                if factor < 1e-200:  # keep the floats finite: rescale everything to ``e.ts``
                    self._score = {i: s * factor for i, s in self._score.items()}
                    self._ref_ms = e.ts
            w = self.weights.get(e.event_type, 0.0) * 2.0 ** (
                (e.ts - self._ref_ms) / self.half_life_ms)
            self._score[e.item_id] = self._score.get(e.item_id, 0.0) + w

    def ranking(self, k: int, exclude: Collection[str] = ()) -> list[str]:
        """The ``k`` most popular items now, best first (ties by item id)."""
        return take(self.ranked(), k, exclude)

    def ranked(self) -> list[str]:
        """Every item seen, most popular now first (ties by item id)."""
        return [i for i, _ in sorted(self._score.items(), key=lambda kv: (-kv[1], kv[0]))]


def take(ranked: Iterable[str], k: int, exclude: Collection[str] = ()) -> list[str]:
    """The first ``k`` items of ``ranked`` not in ``exclude``."""
    out: list[str] = []
    if k <= 0:
        return out
    for item in ranked:
        if item not in exclude:
            out.append(item)
            if len(out) == k:
                break
    return out


class BuyAgain:
    """Each user's own past items of the event types ``types``, scored by a recency-weighted
    count: every event adds 1, and a score halves every ``half_life_ms`` of event time.

    Feed it the events in event-time order (as the replay does); an older event of an item is
    still counted, decayed to the item's latest time."""

    def __init__(self, half_life_ms: int, types: Collection[str]) -> None:
        self.half_life_ms = half_life_ms
        self.types = frozenset(types)
        self._items: dict[str, dict[str, tuple[float, int]]] = {}  # user -> item -> (score, ms)

    def update(self, events: Iterable[Event]) -> None:
        """Count each event of a relevant type for its user and item."""
        h = self.half_life_ms
        for e in events:
            if e.event_type not in self.types:
                continue
            items = self._items.setdefault(e.user_id, {})
            score, at_ms = items.get(e.item_id, (0.0, e.ts))
            if e.ts >= at_ms:
                items[e.item_id] = (score * 2.0 ** (-(e.ts - at_ms) / h) + 1.0, e.ts)
            else:
                items[e.item_id] = (score + 2.0 ** (-(at_ms - e.ts) / h), at_ms)

    def users(self) -> list[str]:
        """Every user with a counted event, sorted."""
        return sorted(self._items)

    def scores(self, user_id: str, now_ms: int) -> dict[str, float]:
        """The user's items and their scores decayed to ``now_ms`` (empty for a new user)."""
        h = self.half_life_ms
        return {item: score * 2.0 ** (-max(0, now_ms - at_ms) / h)
                for item, (score, at_ms) in self._items.get(user_id, {}).items()}

    def ranking(self, user_id: str, now_ms: int, k: int, top_up: Iterable[str] = ()) -> list[str]:
        """The user's ``k`` best own items (ties by item id), then items of ``top_up`` (popular
        items, best first) that are not among them, up to ``k`` in all."""
        return best_then(self.scores(user_id, now_ms), k, top_up)


class UserKnn:
    """The ``user_knn`` baseline: :class:`~streaming.features.neighbours.UserNeighbours` over
    each user's recency-weighted counts of the event types ``types`` (as :class:`BuyAgain`'s,
    with its own ``half_life_ms``: longer, since similar users are found from a long history).

    Args:
        half_life_ms (int): decay of the counts.
        types (Collection[str]): event types counted.
        neighbours (int): users whose vectors are averaged.
        own_weight (float): weight of the user's own vector, in [0, 1].
    """

    def __init__(self, half_life_ms: int, types: Collection[str], neighbours: int = 100,
                 own_weight: float = 0.3) -> None:
        check_parameters(neighbours, own_weight)  # now, not at the first ranking
        self.neighbours = neighbours
        self.own_weight = own_weight
        self.half_life_ms = half_life_ms
        self._counts = BuyAgain(half_life_ms, types)
        self._at: tuple[int, UserNeighbours] | None = None  # built for one time, until updated

    def update(self, events: Iterable[Event]) -> None:
        """Count each event of a counted type for its user and item."""
        self._counts.update(events)
        self._at = None

    def neighbours_at(self, now_ms: int) -> UserNeighbours:
        """Every user's vector of counts decayed to ``now_ms`` (built once per time and count)."""
        if self._at is None or self._at[0] != now_ms:
            self._at = (now_ms, UserNeighbours(
                {u: self._counts.scores(u, now_ms) for u in self._counts.users()},
                self.neighbours, self.own_weight))
        return self._at[1]

    def scores(self, users: Sequence[str], now_ms: int) -> list[dict[str, float]]:
        """Per user, the items with a positive score at ``now_ms`` (empty for a user with no
        counted event)."""
        return self.neighbours_at(now_ms).scores(users)

    def rankings(self, users: Sequence[str], now_ms: int, k: int,
                 top_up: Sequence[str] = ()) -> list[list[str]]:
        """Each user's ``k`` best items by the score above (ties by item id), then items of
        ``top_up`` (popular items, best first) not among them, up to ``k`` in all; a user with
        no counted event gets ``top_up`` alone."""
        return [best_then(scores, k, top_up) for scores in self.scores(users, now_ms)]


def best_then(scores: Mapping[str, float], k: int, top_up: Iterable[str] = ()) -> list[str]:
    """The ``k`` best-scored items of ``scores`` (ties by item id), then items of ``top_up``
    not among them, up to ``k`` in all."""
    best = [item for item, _ in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]
    return best + take(top_up, k - len(best), set(best))


def covisit_ranking(recent: Sequence[str], covisit: Mapping[str, Sequence[tuple[str, float]]],
                    k: int, exclude: Collection[str] = ()) -> list[str]:
    """Co-visitation only: items scored by their summed co-visit counts with the user's recent
    items (``covisit``: recent item -> [(item, count)], the feature store's ``cv:`` lists)."""
    scores: dict[str, float] = {}
    for r in recent:
        for item, count in covisit.get(r, ()):
            scores[item] = scores.get(item, 0.0) + count
    best = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
    return [i for i, _ in best if i not in exclude][:k]


# Candidate sources in the order ``streaming.features.candidates.generate`` tries them.
SOURCE_ORDER = ("recent", "again", "covisit", "neighbours", "retrieval", "trending", "category",
                "new", "popular")


@dataclass(slots=True)
class CandidateRecall:
    """Counts for candidate recall: of ``relevant`` (user, item) pairs (the items each user
    interacts with next), ``found`` are among the user's candidates, ``by_source[s]`` of them
    found by source ``s`` (an item found by several sources is credited to the first, as
    ``generate`` keeps it). ``sources`` are the sources that gave any candidate at all."""

    relevant: int = 0
    found: int = 0
    by_source: Counter[str] = field(default_factory=Counter)
    sources: set[str] = field(default_factory=set)

    def add(self, relevant: Collection[str], cands: Sequence[tuple[str, str]]) -> None:
        """Count one user: their relevant items and their ``(item, source)`` candidates."""
        source_of = dict(cands)
        self.sources.update(source_of.values())
        self.relevant += len(relevant)
        for item in relevant:
            source = source_of.get(item)
            if source is not None:
                self.found += 1
                self.by_source[source] += 1

    def merge(self, other: CandidateRecall) -> None:
        """Add ``other``'s counts to these."""
        self.relevant += other.relevant
        self.found += other.found
        self.by_source.update(other.by_source)
        self.sources |= other.sources

    def as_dict(self, digits: int = 5) -> dict[str, Any]:
        """``{"total": found / relevant, "by_source": {source: share}, "relevant_items": n}``;
        shares are None when nothing was relevant. Sources in :data:`SOURCE_ORDER`, then others
        by name; every source that gave candidates is listed, with 0.0 if it found nothing."""
        names = sorted(self.sources | set(self.by_source),
                       key=lambda s: (SOURCE_ORDER.index(s) if s in SOURCE_ORDER else len(SOURCE_ORDER), s))

        def share(n: int) -> float | None:
            return round(n / self.relevant, digits) if self.relevant else None

        return {"total": share(self.found),
                "by_source": {s: share(self.by_source[s]) for s in names},
                "relevant_items": self.relevant}
