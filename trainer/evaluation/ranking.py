"""Top-K ranking metrics and the two non-learned baselines. Pure: no I/O.

``recall_at_k`` = hits in the top K / ``min(K, |relevant|)`` (so a user with 40 next
interactions can still reach 1.0, as in the OTTO and RecSys-challenge definitions);
``ndcg_at_k`` uses binary relevance with the same ideal of ``min(K, |relevant|)`` hits.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence

import numpy as np

from streaming.contract.events import Event
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
        best = sorted(self._score.items(), key=lambda kv: (-kv[1], kv[0]))
        return [i for i, _ in best if i not in exclude][:k]


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
