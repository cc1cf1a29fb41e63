"""Confidence intervals, candidate recall and the overall ranking summary of ``streamrec eval``."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trainer.evaluation.harness import RANKERS, WindowRanks, ranking_summary
from trainer.evaluation.ranking import CandidateRecall
from trainer.evaluation.stats import Z95, mean_ci95


def test_one_value_per_user_gives_the_textbook_interval() -> None:
    x = [0.0, 0.5, 1.0, 0.25, 0.75]
    iv = mean_ci95(x)
    assert iv is not None and iv.mean == pytest.approx(0.5)
    se = np.std(x, ddof=1) / math.sqrt(len(x))
    assert (iv.lo, iv.hi) == pytest.approx((0.5 - Z95 * se, 0.5 + Z95 * se))
    assert iv.units == iv.values == 5
    assert mean_ci95([]) is None


def test_repeated_users_are_one_unit_and_widen_the_interval() -> None:
    # Each user repeats a constant value: 4 independent users, not 8 observations.
    values = [0.0, 0.0, 1.0, 1.0, 0.2, 0.2, 0.8, 0.8]
    users = ["a", "a", "b", "b", "c", "c", "d", "d"]
    clustered, naive = mean_ci95(values, users), mean_ci95(values)
    assert clustered is not None and naive is not None
    assert clustered.units == 4 and clustered.values == 8
    assert clustered.mean == pytest.approx(0.5)
    assert clustered.hi - clustered.lo > naive.hi - naive.lo
    once = mean_ci95([0.0, 1.0, 0.2, 0.8])
    assert once is not None and (clustered.lo, clustered.hi) == pytest.approx((once.lo, once.hi))


def test_an_interval_needs_two_users_and_rounds_and_clips() -> None:
    single = mean_ci95([0.3, 0.5], ["u", "u"])
    assert single is not None and single.mean == pytest.approx(0.4)
    assert single.rounded() == [None, None]
    wide = mean_ci95([0.0, 1.0])
    assert wide is not None and wide.lo < 0 and wide.hi > 1
    assert wide.rounded(clip=(0.0, 1.0)) == [0.0, 1.0]
    with pytest.raises(ValueError):
        mean_ci95([1.0], ["a", "b"])


def test_candidate_recall_counts_relevant_items_among_candidates_by_first_source() -> None:
    c = CandidateRecall()
    c.add({"a", "b", "x"}, [("a", "recent"), ("b", "trending"), ("c", "popular")])
    c.add({"d"}, [])  # a user without candidates still counts
    other = CandidateRecall()
    other.add({"e", "f"}, [("e", "again"), ("f", "again")])
    c.merge(other)
    assert (c.relevant, c.found) == (6, 4)
    assert c.as_dict() == {"total": round(4 / 6, 5), "by_source": {
        "recent": round(1 / 6, 5), "again": round(2 / 6, 5), "trending": round(1 / 6, 5),
        "popular": 0.0}, "relevant_items": 6}
    assert CandidateRecall().as_dict() == {"total": None, "by_source": {}, "relevant_items": 0}


def window(users: list[str], recall: dict[str, list[float]]) -> WindowRanks:
    metrics = {name: [(r, r) for r in recall.get(name, [0.0] * len(users))] for name in RANKERS}
    return WindowRanks(users, len(users), metrics)


def test_ranking_summary_pools_windows_and_gives_intervals_and_differences() -> None:
    w1 = window(["a", "b"], {"continuous": [1.0, 0.5], "popularity": [0.5, 0.5]})
    w2 = window(["a", "c"], {"continuous": [1.0, 0.0], "popularity": [0.5, 0.0]})
    w1.candidates.add({"i"}, [("i", "recent")])
    w2.candidates.add({"j"}, [])
    out = ranking_summary([w1, w2], k=20)
    assert out["recall_at_20"]["continuous"] == 0.625
    assert out["recall_at_20"]["popularity"] == 0.375
    assert out["ndcg_at_20"]["continuous"] == 0.625
    lo, hi = out["recall_at_20_ci95"]["continuous"]
    assert 0.0 <= lo < 0.625 < hi <= 1.0
    d_lo, d_hi = out["recall_at_20_minus_popularity_ci95"]["continuous"]
    assert d_lo < 0.25 < d_hi
    assert "popularity" not in out["recall_at_20_minus_popularity_ci95"]
    b_lo, b_hi = out["recall_at_20_minus_buy_again_ci95"]["continuous"]  # buy_again: all 0
    assert b_lo < 0.625 < b_hi and "buy_again" not in out["recall_at_20_minus_buy_again_ci95"]
    for base in ("popularity_repeat_policy", "covisit", "lightgbm"):  # all 0 here too
        assert out[f"recall_at_20_minus_{base}_ci95"]["continuous"] == [b_lo, b_hi]
        assert base not in out[f"recall_at_20_minus_{base}_ci95"]
    assert out["candidate_recall"]["total"] == 0.5
    assert "ground_truth" not in out["candidate_recall"]  # a log: no hidden model
    assert out["ranked"] == {"user_windows": 4, "users": 3}
    for w, found in ((w1, ["i"]), (w2, ["j"])):
        w.truth, w.truth_retrieval = CandidateRecall(), CandidateRecall()
        w.truth.add({"i", "j"}, [(i, "truth") for i in found])
        w.truth_retrieval.add({"i", "j"}, [])
    truth = ranking_summary([w1, w2], k=20)["candidate_recall"]["ground_truth"]
    assert truth == {"candidates": 0.5, "retrieval_candidates": 0.0}
    empty = ranking_summary([], k=10)
    assert empty["recall_at_10"]["continuous"] is None
    assert empty["recall_at_10_ci95"]["continuous"] is None
