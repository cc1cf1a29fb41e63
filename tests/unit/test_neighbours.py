"""User-based neighbours (streaming.features.neighbours): pure, against a brute-force reference."""

from __future__ import annotations

import numpy as np
import pytest

from streaming.features.neighbours import UserNeighbours, user_vector


def _reference(vectors: dict[str, dict[str, float]], user: str, k: int, a: float
               ) -> dict[str, float]:
    """The module docstring's formula, one user at a time in plain numpy."""
    users = sorted(u for u, v in vectors.items() if any(w > 0 for w in v.values()))
    items = sorted({i for v in vectors.values() for i in v})
    m = np.array([[vectors[u].get(i, 0.0) for i in items] for u in users])
    m = m / np.linalg.norm(m, axis=1, keepdims=True)
    me = users.index(user)
    sims = m @ m[me]
    sims[me] = 0.0
    near = np.argsort(-sims, kind="stable")[:k]
    w = sims[near].clip(min=0.0)
    mean = (w[:, None] * m[near]).sum(0) / w.sum() if w.sum() > 0 else np.zeros(len(items))
    score = a * m[me] + (1 - a) * mean
    return {i: s for i, s in zip(items, score, strict=True) if s > 0}


def test_scores_match_the_formula_on_random_vectors_in_any_block_size() -> None:
    rng = np.random.default_rng(3)
    vectors = {f"u{n}": {f"i{j}": float(rng.exponential())
                         for j in rng.choice(40, size=rng.integers(1, 8), replace=False)}
               for n in range(60)}
    vectors["empty"] = {"i1": 0.0}  # no positive weight: no vector
    users = ["u3", "nobody", "u17", "empty", "u59"]
    whole = UserNeighbours(vectors, neighbours=5, own_weight=0.4).scores(users)
    one_by_one = UserNeighbours(vectors, neighbours=5, own_weight=0.4, dense_cells=1).scores(users)
    assert whole[1] == {} and whole[3] == {}
    for got, again, user in zip(whole, one_by_one, users, strict=True):
        assert got.keys() == again.keys()
        if user in ("nobody", "empty"):
            continue
        want = _reference(vectors, user, 5, 0.4)
        assert got.keys() == want.keys()
        for item, score in want.items():
            assert got[item] == pytest.approx(score) == again[item]


def test_a_user_without_similar_users_keeps_only_their_own_items() -> None:
    nb = UserNeighbours({"a": {"x": 2.0}, "b": {"y": 1.0}}, neighbours=3, own_weight=0.3)
    assert nb.scores(["a"]) == [{"x": pytest.approx(0.3)}]


@pytest.mark.parametrize(("neighbours", "own_weight"), [(0, 0.3), (5, -0.1), (5, 1.5)])
def test_invalid_parameters_are_refused(neighbours: int, own_weight: float) -> None:
    with pytest.raises(ValueError):
        UserNeighbours({}, neighbours=neighbours, own_weight=own_weight)


def test_top_lists_are_the_best_scores_in_order_in_any_block_size() -> None:
    rng = np.random.default_rng(5)
    vectors = {f"u{n}": {f"i{j}": float(rng.exponential())
                         for j in rng.choice(30, size=rng.integers(1, 6), replace=False)}
               for n in range(40)}
    users = ["u1", "nobody", "u22", "u39"]
    model = UserNeighbours(vectors, neighbours=4, own_weight=0.3)
    scores = model.scores(users)
    for top in (model.top(users, 5), UserNeighbours(vectors, 4, 0.3, dense_cells=1).top(users, 5)):
        assert top[1] == []
        for got, every in zip(top, scores, strict=True):
            best = sorted(every.items(), key=lambda p: (-p[1], p[0]))[:5]
            assert [i for i, _ in got] == [i for i, _ in best]
            assert [s for _, s in got] == pytest.approx([s for _, s in best])
    assert all(len(t) <= 2 for t in model.top(users, 2))


def test_a_user_vector_weights_event_types_and_ages_items_from_their_last_touch() -> None:
    day = 86_400_000
    entries = {"a": (2.0, 1.0, 0.0, 10 * day, 5.0),  # 2 views + 1 click, last at day 10
               "b": (0.0, 0.0, 1.0, 0.0, 1.0),  # a purchase at day 0
               "c": (0.0, 0.0, 0.0, 0.0, 0.0)}  # no counted interaction: left out
    vec = user_vector(entries, at_ms=10 * day, half_life_ms=10 * day)
    assert vec == pytest.approx({"a": 2 * 1.0 + 3.0, "b": 10.0 / 2})
