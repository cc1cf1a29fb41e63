from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from streaming.contract.events import validate_event
from streaming.sources.synthetic import SyntheticConfig, SyntheticStream

START = 1_732_000_000_000
SMALL = SyntheticConfig(n_users=200, n_items=500, n_categories=10)


def take(seed: int, n: int) -> list:
    return list(SyntheticStream(seed, SMALL).events(START, rate=100.0, limit=n))


def test_same_seed_same_events_other_seed_other_events() -> None:
    assert take(7, 2000) == take(7, 2000)
    assert take(7, 2000) != take(8, 2000)


def test_events_are_valid_time_ordered_and_unique() -> None:
    events = take(1, 5000)
    assert len(events) == 5000
    for e in events:
        assert validate_event(e.to_dict(), now_ms=START + 10**9) == e
    assert all(a.ts <= b.ts for a, b in itertools.pairwise(events))
    assert len({e.event_id for e in events}) == len(events)


def test_follow_ups_come_after_a_view_of_the_same_item_by_the_same_user() -> None:
    events = take(3, 20_000)
    viewed: set[tuple[str, str]] = set()
    for e in events:
        if e.event_type == "view":
            viewed.add((e.user_id, e.item_id))
        else:
            assert (e.user_id, e.item_id) in viewed
    kinds = Counter(e.event_type for e in events)
    ctr = kinds["click"] / kinds["view"]
    assert 0.03 < ctr < 0.4, kinds
    assert 0 < kinds["purchase"] < kinds["click"]


def test_ground_truth_prefers_items_in_the_users_interests() -> None:
    stream = SyntheticStream(5, SMALL)
    user = 0
    interests = stream.user_interest[user]
    top = max(range(len(interests)), key=interests.__getitem__)
    bottom = min(range(len(interests)), key=interests.__getitem__)
    p_top = [stream.click_probability(user, i) for i, c in enumerate(stream.item_category) if c == top]
    p_bot = [stream.click_probability(user, i) for i, c in enumerate(stream.item_category) if c == bottom]
    assert sum(p_top) / len(p_top) > 2 * sum(p_bot) / len(p_bot)


def test_live_events_carry_the_clock_at_which_they_are_handed_out() -> None:
    ticks = iter(range(1_000_000, 2_000_000, 7))
    clock = lambda: next(ticks) / 1000  # noqa: E731 - seconds, advancing 7 ms per call
    events = list(itertools.islice(SyntheticStream(1).live(500.0, clock=clock), 50))
    stamps = [e.ts for e in events]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    assert stamps[0] >= 1_000_007 and stamps[-1] < 1_000_000 + 7 * 200


def test_drift_happens_at_known_points_and_changes_the_hidden_model() -> None:
    cfg = SyntheticConfig(n_users=200, n_items=500, n_categories=10, drift_every=1000,
                          new_items_per_drift=50)
    stream = SyntheticStream(7, cfg)
    before = [list(v) for v in stream.user_interest]
    events = list(stream.events(START, rate=100.0, limit=3000))
    views_until_drift = [e for e in events if e.event_type == "view"]
    assert [n for n, _ in stream.drifts] == [1000, 2000][:len(stream.drifts)]
    assert stream.drifts and stream.drifts[0][1] == START + 10_000  # view 1000 at 100 views/s
    assert stream.n_items == 500 + 50 * len(stream.drifts)
    # Interests were permuted, not redrawn: same values, other categories.
    assert sorted(stream.user_interest[0]) == sorted(before[0])
    assert stream.user_interest != before
    new_items = {f"i{i}" for i in range(500, stream.n_items)}
    after = [e for e in views_until_drift if e.ts >= stream.drifts[0][1]]
    assert sum(e.item_id in new_items for e in after) > 0.05 * len(after)  # new items are hot
    again = SyntheticStream(7, cfg)
    assert list(again.events(START, rate=100.0, limit=3000)) == events
    assert again.drifts == stream.drifts


def test_lazy_users_keep_memory_bounded_and_stay_seeded() -> None:
    """The scale fixture (lazy users; 200k users and items here for speed): interests derived
    on first use, kept in a bounded cache; the same seed gives the same events, drifts too."""
    from streaming.sources.synthetic import SyntheticConfig, SyntheticStream

    cfg = SyntheticConfig(n_users=200_000, n_items=200_000, lazy_users=True,
                          lazy_cache_users=500, drift_every=2_000)

    def run() -> tuple[list[str], SyntheticStream]:
        s = SyntheticStream(11, cfg)
        return [e.to_json().decode() for e in s.events(1_700_000_000_000, 100.0,
                                                        limit=5_000)], s

    first, stream = run()
    second, _ = run()
    assert first == second
    assert len(stream.user_interest._cache) <= 500  # bounded, whatever the users seen
    assert stream.drifts  # drifted at least once
    users = {line.split('"user_id":"')[1].split('"')[0] for line in first}
    assert len(users) > 1_000  # many distinct users
    # Interests are a distribution and survive eviction unchanged (derived, not stored).
    u = 123_45
    before = list(stream.user_interest[u])
    for other in range(1_000):
        stream.user_interest[other]
    assert stream.user_interest[u] == before and abs(sum(before) - 1.0) < 1e-9


def test_ground_truth_scores_are_view_share_times_click_probability() -> None:
    stream = SyntheticStream(5, SMALL)
    truth = stream.truth()
    for user in (0, 17, 199):
        scores = truth.click_scores(user)
        p_click = [stream.click_probability(user, i) for i in range(stream.n_items)]
        p_view = scores / p_click
        # Every view picks one item: the view shares over the catalogue sum to 1.
        assert abs(p_view.sum() - 1.0) < 1e-9
        top = truth.top_items(user, 10)
        assert len(set(top)) == 10
        assert list(scores[top]) == sorted(scores[top], reverse=True)
        assert scores[top[-1]] >= max(s for i, s in enumerate(scores) if i not in top)
    assert truth.top_item_ids("u3", 2) == [f"i{i}" for i in truth.top_items(3, 2)]
    assert truth.top_items(0, 10**6) == truth.top_items(0, stream.n_items)


def test_ground_truth_top_items_hold_a_users_clicks() -> None:
    # Stationary world, the most active user: its top 5% of items by the hidden model hold
    # most of its clicks, far more than the 5% most popular items do.
    stream = SyntheticStream(2, SMALL, record_truth=True)
    clicks = Counter(e.item_id for e in stream.events(START, rate=100.0, limit=60_000)
                     if e.user_id == "u0" and e.event_type == "click")
    k = SMALL.n_items // 20
    truth = stream.truth_at(START)
    top = set(truth.top_item_ids("u0", k))
    popular = {f"i{i}" for i in sorted(range(SMALL.n_items), key=lambda i: -truth.weight[i])[:k]}
    total = sum(clicks.values())
    assert total > 100
    in_top = sum(n for i, n in clicks.items() if i in top) / total
    in_popular = sum(n for i, n in clicks.items() if i in popular) / total
    assert in_top > 0.6 and in_top > in_popular + 0.15, (in_top, in_popular)


def test_truth_at_follows_the_drifts_and_keeps_old_regimes() -> None:
    cfg = SyntheticConfig(n_users=50, n_items=200, n_categories=5, drift_every=1_000,
                          new_items_per_drift=10)
    stream = SyntheticStream(4, cfg, record_truth=True)
    events = list(stream.events(START, rate=100.0, limit=3_500))
    assert len(stream.drifts) >= 2
    (_, first), (_, second) = stream.drifts[:2]
    before, at, after = stream.truth_at(first - 1), stream.truth_at(first), stream.truth_at(second)
    assert before is stream.truth_at(START) and at is not before and after is not at
    assert len(before.category) == 200 and len(at.category) == 210 and len(after.category) == 220
    assert not np.array_equal(before.interest, at.interest)  # interests moved on the drift
    # A view between the second and third drift is drawn from the regime in force then.
    end = stream.drifts[2][1] if len(stream.drifts) > 2 else float("inf")
    late = [e for e in events if e.event_type == "view" and second <= e.ts < end]
    assert late and all(int(e.item_id[1:]) < len(after.category) for e in late)
    with pytest.raises(ValueError):
        SyntheticStream(1, SMALL).truth_at(START)
    with pytest.raises(ValueError):
        SyntheticStream(1, SyntheticConfig(n_users=10, n_items=20, lazy_users=True)).truth()
    with pytest.raises(ValueError):
        stream.truth_at(START).top_item_ids("i3", 1)
