from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from streaming.contract.events import Event
from trainer.evaluation.dump import CandidateDump
from trainer.evaluation.harness import _relevant_by_window, _sample_users
from trainer.evaluation.lgbm import BatchRetrained, lgbm_matrix
from trainer.evaluation.ranking import (
    BuyAgain,
    DecayedPopularity,
    UserKnn,
    covisit_ranking,
    ndcg_at_k,
    recall_at_k,
    take,
    top_k,
)

H = 3_600_000


def ev(item: str, ts: int, kind: str = "click") -> Event:
    return Event(f"{item}-{ts}", "u1", item, kind, ts)


def test_recall_counts_hits_against_at_most_k_relevant_items() -> None:
    assert recall_at_k(["a", "b", "c"], {"b", "x"}, 3) == 0.5
    assert recall_at_k(["a", "b"], {f"r{n}" for n in range(30)} | {"a", "b"}, 2) == 1.0
    assert recall_at_k(["x", "y", "a"], {"a"}, 2) == 0.0  # beyond k
    with pytest.raises(ValueError):
        recall_at_k(["a"], set(), 20)


def test_ndcg_rewards_hits_near_the_top() -> None:
    assert ndcg_at_k(["a", "b"], {"a"}, 20) == 1.0
    assert ndcg_at_k(["b", "a"], {"a"}, 20) == pytest.approx(1 / math.log2(3))
    assert ndcg_at_k(["a", "b"], {"a", "b"}, 20) == 1.0
    assert ndcg_at_k(["x"], {"a"}, 20) == 0.0


def test_top_k_skips_excluded_items_and_keeps_input_order_on_ties() -> None:
    items = ["a", "b", "c", "d"]
    assert top_k(items, np.array([0.1, 0.9, 0.9, 0.5]), 2) == ["b", "c"]
    assert top_k(items, np.array([0.1, 0.9, 0.9, 0.5]), 2, exclude={"b"}) == ["c", "d"]


def test_decayed_popularity_lets_recent_activity_overtake_old() -> None:
    pop = DecayedPopularity(half_life_ms=H)
    pop.update([ev("old", 0) for _ in range(10)])  # 10 x 3 at t=0
    pop.update([ev("new", 5 * H) for _ in range(2)])  # 2 x 3 at 5 half-lives later
    assert pop.ranking(2) == ["new", "old"]  # 30 / 32 < 6
    assert pop.ranking(2, exclude={"new"}) == ["old"]
    pop.update([ev("far", 2000 * H, "purchase")])  # rescales without overflow
    assert pop.ranking(1) == ["far"]


def test_decayed_popularity_lists_every_item_and_take_skips_exclusions() -> None:
    pop = DecayedPopularity(half_life_ms=H)
    pop.update([ev("a", 0), ev("b", 0), ev("b", 0), ev("c", 0, "purchase")])
    assert pop.ranked() == ["c", "b", "a"]
    assert take(pop.ranked(), 2, exclude={"c"}) == ["b", "a"]
    assert take(pop.ranked(), 0) == [] and take([], 3) == []


def uev(user: str, item: str, ts: int, kind: str = "purchase") -> Event:
    return Event(f"{user}-{item}-{ts}", user, item, kind, ts)


def test_buy_again_ranks_own_items_by_recency_weighted_count_then_popular() -> None:
    again = BuyAgain(half_life_ms=H, types=("purchase",))
    again.update([uev("u1", "old", 0), uev("u1", "old", 0), uev("u1", "old", 0),
                  uev("u1", "new", 4 * H), uev("u1", "viewed", 5 * H, "view"),
                  uev("u2", "other", 5 * H)])
    now = 5 * H
    scores = again.scores("u1", now)
    assert scores["old"] == pytest.approx(3 * 2 ** -5) and scores["new"] == pytest.approx(0.5)
    assert "viewed" not in scores  # not a relevant type
    assert again.ranking("u1", now, 2) == ["new", "old"]
    assert again.ranking("u1", now, 4, top_up=["new", "p1", "p2", "p3"]) == [
        "new", "old", "p1", "p2"]
    assert again.ranking("nobody", now, 2, top_up=["p1", "p2", "p3"]) == ["p1", "p2"]
    # x bought twice but long ago: 2^-10 + 2^-1 at 10 h, below y's fresh 1.
    again.update([uev("u3", "x", 0), uev("u3", "y", 10 * H)])
    again.update([uev("u3", "x", 9 * H)])
    assert again.ranking("u3", 10 * H, 2) == ["y", "x"]
    # An event older than the item's latest still counts, decayed.
    again.update([uev("u3", "y", 9 * H)])
    assert again.scores("u3", 10 * H)["y"] == pytest.approx(1.5)


def test_user_knn_ranks_own_and_similar_users_items(monkeypatch: pytest.MonkeyPatch) -> None:
    knn = UserKnn(half_life_ms=1000 * H, types=("purchase",), neighbours=1, own_weight=0.5)
    # u1 and u2 share a and b; u2 also bought c. u3 bought only z (similarity 0 to u1).
    knn.update([uev("u1", "a", 0), uev("u1", "b", 0), uev("u2", "a", 0), uev("u2", "b", 0),
                uev("u2", "c", 0), uev("u3", "z", 0), uev("u3", "z", 0),
                uev("u1", "v", 0, "view")])  # not a counted type
    now = H
    ranked = knn.rankings(["u1", "nobody", "u3"], now, 4, top_up=["p", "a", "q"])
    # u1 = (a + b) / sqrt 2; its one neighbour u2 = (a + b + c) / sqrt 3 (cosine 0.816):
    # a, b: 0.5 / sqrt 2 + 0.5 / sqrt 3 = 0.642 each (ties by id), c: 0.5 / sqrt 3 = 0.289.
    assert ranked[0] == ["a", "b", "c", "p"]
    assert ranked[1] == ["p", "a", "q"]  # no history: the top-up alone
    # u3's nearest user has cosine 0 to it: its neighbours add nothing.
    assert ranked[2] == ["z", "p", "a", "q"]
    got = knn.scores(["u1"], now)[0]
    assert got["a"] == pytest.approx(0.5 / 2 ** 0.5 + 0.5 / 3 ** 0.5)
    assert got["c"] == pytest.approx(0.5 / 3 ** 0.5) and "z" not in got
    # Scored one user at a time (a small dense scratch): the same.
    monkeypatch.setattr(knn.neighbours_at(now), "dense_cells", 1)
    assert knn.rankings(["u1", "nobody", "u3"], now, 4, top_up=["p", "a", "q"]) == ranked
    # Counts decay as buy-again's: the same ranking later, rebuilt after new events.
    knn.update([uev("u1", "c", 2 * H)])
    assert knn.rankings(["u1"], 2 * H, 3)[0][0] == "c"
    with pytest.raises(ValueError):
        UserKnn(half_life_ms=H, types=("purchase",), own_weight=1.5)


def test_covisit_ranking_sums_counts_over_recent_items() -> None:
    covisit = {"r1": [("a", 3.0), ("b", 2.0)], "r2": [("b", 2.0), ("c", 4.0)]}
    assert covisit_ranking(["r1", "r2"], covisit, 3) == ["b", "c", "a"]
    assert covisit_ranking(["r1", "r2"], covisit, 3, exclude={"b"}) == ["c", "a"]
    assert covisit_ranking([], covisit, 3) == []


def test_lightgbm_rival_is_deterministic_and_learns_a_simple_rule() -> None:
    rng = np.random.default_rng(0)
    dense = rng.normal(size=(4000, 3))
    y = (dense[:, 0] + 0.3 * rng.normal(size=4000) > 0).astype(np.float64)
    x = lgbm_matrix(dense, np.where(rng.random(4000) < 0.2, -1, rng.integers(0, 5, 4000)))
    assert np.isnan(x[:, 3]).any() and x.shape == (4000, 4)
    models = []
    for _ in range(2):
        m = BatchRetrained(seed=3, rounds=20)
        assert (m.predict(x[:5]) == 0.5).all()  # before the first fit
        m.add(x, y)
        assert m.retrain()
        models.append(m.predict(x))
    assert np.array_equal(models[0], models[1])
    assert ((models[0] > 0.5) == y.astype(bool)).mean() > 0.85


def test_lightgbm_rival_keeps_only_the_newest_rows_and_waits_for_both_classes() -> None:
    m = BatchRetrained(seed=0, max_rows=100)
    m.add(np.zeros((60, 2)), np.zeros(60))
    assert not m.retrain()  # one class only
    m.add(np.ones((60, 2)), np.ones(60))
    m.add(np.ones((60, 2)), np.ones(60))
    assert m._rows <= 160 and len(m._y) == 2  # the oldest block went


def test_next_interactions_are_grouped_by_window_and_users_sampled_reproducibly() -> None:
    events = [Event("a", "u1", "i1", "view", 0), Event("b", "u1", "i2", "click", 10),
              Event("c", "u2", "i3", "purchase", 65), Event("d", "u2", "i3", "click", 70)]
    rel = _relevant_by_window(events, t0=0, window_ms=60, types=("click", "purchase"))
    assert {w: dict(v) for w, v in rel.items()} == {0: {"u1": {"i2"}}, 1: {"u2": {"i3"}}}
    many = {f"u{n}": {"i"} for n in range(50)}
    assert _sample_users(many, 10, seed=7, window=3) == _sample_users(many, 10, seed=7, window=3)
    assert _sample_users(many, 10, seed=7, window=3) != _sample_users(many, 10, seed=7, window=4)
    assert len(_sample_users(many, 10, seed=7, window=3)) == 10
    assert _sample_users({"u1": {"i"}}, 10, seed=7, window=0) == ["u1"]


def test_candidate_dump_keeps_one_row_per_candidate_and_each_windows_relevant_count(
        tmp_path: Path) -> None:
    empty = np.load(CandidateDump(("d0", "d1"), tmp_path / "empty.npz").write())
    assert empty["dense"].shape == (0, 2) and empty["label"].shape == (0,)
    dump = CandidateDump(("d0", "d1"), tmp_path / "c.npz")
    dump.add(100, "u1", [("i1", "recent"), ("i2", "again")], {"i2", "i9"},
             np.array([[1, 2], [3, 4]]), {"continuous": np.array([0.2, 0.7])}, {"i2": 1.5})
    dump.add(200, "u2", [("i3", "popular")], set(), np.array([[5, 6]]),
             {"continuous": np.array([0.1])}, {})
    d = np.load(dump.write())
    assert d["label"].tolist() == [0, 1, 0] and d["group"].tolist() == [0, 0, 1]
    assert d["relevant"].tolist() == [2, 0] and d["buy_again"].tolist() == [0.0, 1.5, 0.0]
    assert d["dense"].shape == (3, 2) and d["score_continuous"].shape == (3,)
    assert [str(d["sources"][s]) for s in d["source"]] == ["recent", "again", "popular"]
    assert d["item"].tolist() == ["i1", "i2", "i3"] and d["user"].tolist() == [0, 0, 1]
    assert [str(d["users"][u]) for u in d["user"]] == ["u1", "u1", "u2"]
