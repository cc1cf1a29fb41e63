"""FeedRanker.scoring_parts: several users' candidates in one feature call give each user's
rows exactly as that user scored alone against :func:`feature_matrix` would."""

from __future__ import annotations

from typing import Any

import numpy as np

from models.batch import hash_ids, hash_optional_ids
from models.spec import DEFAULT_SPEC
from streaming.features.candidates import CandidateReads
from streaming.features.state import (
    DEFAULT_FEATURES,
    feature_matrix,
    item_columns,
    price_values,
)
from streaming.serving.ranker import CachedItem, FeedRanker, ModelHolder, UserReads

T0 = 1_732_000_000_000
H = 3_600_000


def _item(k: int) -> dict[str, Any]:
    state: dict[str, Any] = {"view.t": float(T0 - k * H), "view.1h": 1.0 + k, "n.view": 10.0 * k,
                             "n.click": float(k), "first": float(T0 - 40 * H)}
    if k % 3:
        state["cat"] = "shoes" if k % 3 == 1 else "hats"
    if k % 4:
        state["price"] = 2.5 * k - 5
    return state


def _cached(items: list[str]) -> dict[str, CachedItem]:
    states = [_item(k) for k in range(len(items))]
    cols = item_columns(states)
    rows = hash_ids(items, DEFAULT_SPEC.table_of("item_id").num_embeddings)
    cats = [st.get("cat") for st in states]
    cat_rows = hash_optional_ids(cats, DEFAULT_SPEC.table_of("category").num_embeddings)
    prices = price_values([st.get("price") for st in states], len(states))
    return {i: CachedItem(0.0, states[k], cols[k], int(rows[k]), int(cat_rows[k]), cats[k],
                          float(prices[k])) for k, i in enumerate(items)}


def _user(name: str, k: int) -> UserReads:
    state = {"view.t": float(T0 - k * H), "view.1h": 2.0 * k, "last": float(T0 - H),
             "c.shoes.a": 3.0 + k, "c.shoes.s": 1.0, "c.shoes.t": float(T0 - 2 * H)}
    recent = [(f"i{j}", T0 - j * H) for j in range(k)]
    own = {"i1": (1.0, 0.0, 0.0, float(T0 - H), 1.0)} if k else {}
    return UserReads(name, state, recent, CandidateReads([], {}, {}, [], []), own)


def test_users_scored_together_get_the_rows_they_get_alone() -> None:
    items = [f"i{k}" for k in range(12)]
    cached = _cached(items)
    ranker = FeedRanker(None, "t:", ModelHolder())  # type: ignore[arg-type]  # no reads here
    users = [_user("ua", 0), _user("ub", 3), _user("uc", 5)]
    lists = [items[:7], items[4:], [items[1], items[9], items[2]]]  # overlapping candidates
    parts = ranker.scoring_parts(users, lists, cached, T0)
    for r, its, part in zip(users, lists, parts, strict=True):
        states = [cached[i].state for i in its]
        alone = feature_matrix(r.state, r.recent, states, [st.get("cat") for st in states],
                               [st.get("price") for st in states], T0, DEFAULT_FEATURES, None,
                               [r.user_items.get(i) for i in its])
        assert np.ascontiguousarray(part.dense).tobytes() == alone.tobytes()
        assert list(part.items) == its and part.user_id == r.user_id
        assert list(part.categories) == [cached[i].category for i in its]
        assert part.item_rows.tolist() == [cached[i].row for i in its]  # type: ignore[union-attr]
        assert part.category_rows.tolist() == [  # type: ignore[union-attr]
            cached[i].category_row for i in its]
        assert list(part.recent) == [i for i, _ in r.recent]
