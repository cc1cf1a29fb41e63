"""The neighbour job on real Redis: lists from the user x item state, the lock that schedules
it, and the lists as the scorer's ``neighbours`` candidates."""

from __future__ import annotations

import pytest

from streaming.contract.names import Keys
from streaming.features.neighbours import UserNeighbours, user_vector
from streaming.features.state import parse_user_items
from streaming.serving.neighbour_job import NeighbourJob
from streaming.serving.ranker import FeedRanker, ModelHolder
from streaming.settings import ServingSettings, Settings
from tests.integration.test_processor import Harness, e

pytestmark = pytest.mark.integration
T0 = 1_732_000_000_000
DAY = 86_400_000


def test_lists_hold_similar_users_items_and_match_the_pure_computation(
        stack: Settings, redis_client) -> None:
    h = Harness(stack)
    try:
        # u1 and u2 buy a and b; u2 buys c two hours later (not co-visited). u3 buys only x.
        h.feed([e(1, "purchase", T0, item="a"), e(2, "purchase", T0 + 1, item="b"),
                e(3, "purchase", T0 + 2, user="u2", item="a"),
                e(4, "purchase", T0 + 3, user="u2", item="b"),
                e(5, "purchase", T0 + 7_200_000, user="u2", item="c"),
                e(6, "purchase", T0 + 5, user="u3", item="x")])
    finally:
        h.close()
    keys, cfg = Keys(stack.redis.key_prefix), ServingSettings(neighbour_items=3)
    at = T0 + DAY
    run = NeighbourJob(redis_client, keys, cfg).run(at)
    assert (run.users, run.lists) == (3, 3)
    lists = {u: [(m.decode(), s) for m, s in redis_client.zrevrange(keys.neighbours(u), 0, -1,
                                                                     withscores=True)]
             for u in ("u1", "u2", "u3")}
    assert "c" in dict(lists["u1"]) and "x" not in dict(lists["u1"])  # from u2, not u3
    assert [i for i, _ in lists["u3"]] == ["x"]  # no similar user: its own item only
    # The same lists as the pure computation over the state as stored.
    vectors = {u: user_vector(parse_user_items(redis_client.hgetall(keys.user_items(u)).items()),
                              at, cfg.neighbour_half_life_ms) for u in ("u1", "u2", "u3")}
    expected = UserNeighbours(vectors, cfg.neighbour_users, cfg.neighbour_own_weight).top(
        ["u1", "u2", "u3"], 3)
    for user, want in zip(("u1", "u2", "u3"), expected, strict=True):
        assert [i for i, _ in lists[user]] == [i for i, _ in want]
        assert [s for _, s in lists[user]] == pytest.approx([s for _, s in want])
    assert 0 < redis_client.pttl(keys.neighbours("u1")) <= 3_600_000  # expires unless rebuilt
    # The scorer offers them as candidates, after the user's own items.
    reads = FeedRanker(redis_client, stack.redis.key_prefix, ModelHolder(), serving=cfg
                       ).read_user("u1", at)
    assert dict(reads.neighbours) == pytest.approx(dict(lists["u1"]))
    sources = dict(FeedRanker(redis_client, stack.redis.key_prefix, ModelHolder(), serving=cfg)
                   .candidate_batch(["u1"], at).cands[0])
    assert sources["c"] == "neighbours" and sources["a"] == "recent"
    # Fewer candidates than the list holds: the top of the list; every item keeps its score.
    one = FeedRanker(redis_client, stack.redis.key_prefix, ModelHolder(),
                     serving=ServingSettings(neighbour_items=3, neighbour_candidates=1)
                     ).read_user("u1", at)
    assert one.candidates.neighbours == lists["u1"][:1] and one.neighbours == reads.neighbours


def test_one_scorer_per_interval_runs_it_and_zero_turns_it_off(
        stack: Settings, redis_client) -> None:
    h = Harness(stack)
    try:
        h.feed([e(1, "view", T0, item="a")])
    finally:
        h.close()
    keys = Keys(stack.redis.key_prefix)
    first = NeighbourJob(redis_client, keys, ServingSettings(neighbour_interval_s=60.0))
    second = NeighbourJob(redis_client, keys, ServingSettings(neighbour_interval_s=60.0))
    assert first.run_if_due(T0) is not None
    assert second.run_if_due(T0) is None  # the lock holds for the interval
    assert 0 < redis_client.pttl(keys.neighbours_lock) <= 60_000
    redis_client.delete(keys.neighbours_lock)  # the interval has passed
    assert second.run_if_due(T0) is not None
    off = NeighbourJob(redis_client, keys, ServingSettings(neighbour_interval_s=0.0))
    redis_client.delete(keys.neighbours_lock)
    assert off.run_if_due(T0) is None and not redis_client.exists(keys.neighbours_lock)
