"""The batch processor on real Redis and a real broker (no Faust: that is test_worker.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from streaming.contract.events import Event
from streaming.contract.examples import decode_example, example_features
from streaming.ingest.processor import BatchProcessor, ProducerSink, RawMessage, dlq_reason, processor_config
from streaming.ingest.state_store import StateStore, read_stats
from streaming.io.producer import EventProducer
from streaming.io.redis_client import client_kwargs, connect
from streaming.settings import Settings
from tests.integration.helpers import consume_all

pytestmark = pytest.mark.integration
T0 = 1_732_000_000_000
H = 3_600_000
W = 60_000


class Harness:
    """Feeds scripted messages to one BatchProcessor, like the agent does, and reads back."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.client = aioredis.Redis.from_url(settings.redis.url, **client_kwargs(settings.redis))
        self.producer = EventProducer(settings, linger_ms=1)
        self.store = StateStore(self.client, settings.redis.key_prefix, settings.topics.events)
        self.processor = BatchProcessor(self.store, ProducerSink(self.producer),
                                        processor_config(settings), clock=lambda: T0 / 1000 + 3600)
        self.offsets: dict[int, int] = {}

    def feed(self, values: list[bytes | Event], partition: int = 0, key: bytes | None = None) -> Any:
        msgs = []
        for v in values:
            off = self.offsets.get(partition, -1) + 1
            self.offsets[partition] = off
            if isinstance(v, Event):
                msgs.append(RawMessage(off, v.key, v.to_json()))
            else:
                msgs.append(RawMessage(off, key, v))
        return self.loop.run_until_complete(self.processor.process(partition, msgs))

    def replay(self, partition: int, first: int, values: list[Event]) -> Any:
        msgs = [RawMessage(first + n, v.key, v.to_json()) for n, v in enumerate(values)]
        return self.loop.run_until_complete(self.processor.process(partition, msgs))

    def hash(self, key: str) -> dict[str, str]:
        raw = self.loop.run_until_complete(self.client.hgetall(self.settings.redis.key_prefix + key))
        return {k.decode(): v.decode() for k, v in raw.items()}

    def stats(self) -> dict[str, int]:
        client = connect(self.settings.redis)
        try:
            return read_stats(client, self.settings.redis.key_prefix, range(4))
        finally:
            client.close()

    def close(self) -> None:
        self.producer.flush(10)
        self.loop.run_until_complete(self.client.aclose())
        self.loop.close()


@pytest.fixture
def harness(stack: Settings) -> Iterator[Harness]:
    settings = stack.with_values({"stream.attribution_window_ms": str(W),
                                  "stream.allowed_lateness_ms": "1000"})
    h = Harness(settings)
    yield h
    h.close()


def e(n: int, kind: str, ts: int, user: str = "u1", item: str = "i1", **kw: Any) -> Event:
    return Event(f"e{n}", user, item, kind, ts, **kw)


def test_exact_feature_values_for_a_scripted_stream(harness: Harness) -> None:
    harness.feed([
        e(1, "view", T0, category="shoes", price=10.0),
        e(2, "click", T0 + 1_000, category="shoes"),
        e(3, "view", T0 + H, item="i2", category="hats"),
    ])
    harness.feed([e(4, "view", T0 + 2 * H, category="shoes")])
    u = harness.hash("u:u1")
    assert u["view.t"] == str(T0 + 2 * H)
    # views at T0, T0+H, T0+2H with a 1 h half-life: 0.25 + 0.5 + 1
    assert float(u["view.1h"]) == 1.75
    assert float(u["view.1d"]) == pytest.approx(2 ** (-2 / 24) + 2 ** (-1 / 24) + 1, rel=1e-15)
    assert float(u["click.1h"]) == 1.0 and u["click.t"] == str(T0 + 1_000)
    assert u["last"] == str(T0 + 2 * H)
    # shoes: view (w=1) at T0, click (w=3) at T0+1s, view (w=1) at T0+2h, half-life 1 d
    expected = (1 * 2 ** (-1_000 / 86_400_000) + 3) * 2 ** (-(2 * H - 1_000) / 86_400_000) + 1
    assert float(u["c.shoes.a"]) == pytest.approx(expected, rel=1e-15)
    i1 = harness.hash("i:i1")
    assert (i1["n.view"], i1["n.click"], i1["first"], i1["cat"]) == ("2", "1", str(T0), "shoes")
    recent = harness.loop.run_until_complete(
        harness.client.lrange(harness.settings.redis.key_prefix + "ur:u1", 0, -1))
    assert [r.decode().split("\x1f")[0] for r in recent] == ["i1", "i2", "i1", "i1"]
    covisit = harness.loop.run_until_complete(harness.client.zrange(
        harness.settings.redis.key_prefix + "cv:i1", 0, -1, withscores=True))
    assert covisit == []  # i2 was viewed an hour later: outside the 30 min co-visit window


def test_covisitation_within_the_window(harness: Harness) -> None:
    harness.feed([e(1, "view", T0), e(2, "view", T0 + 60_000, item="i2"),
                  e(3, "view", T0 + 120_000, item="i3")])
    cv = harness.loop.run_until_complete(harness.client.zrange(
        harness.settings.redis.key_prefix + "cv:i2", 0, -1, withscores=True))
    assert dict(cv) == {b"i1": 1.0, b"i3": 1.0}


def test_window_edges_reach_the_examples_topic(harness: Harness) -> None:
    t = T0 + 100
    # Out of order: the click on d arrives before its view (within the allowed lateness).
    harness.feed([e(7, "click", T0 + 30, item="d"), e(8, "view", T0 + 20, item="d")])
    harness.feed([
        e(1, "view", t, item="a"), e(3, "view", t, item="b"), e(5, "view", t, item="c"),
        e(6, "purchase", t + 5, item="c"),
        e(2, "click", t + W - 1, item="a"),  # 1 ms inside the window
        e(4, "click", t + W + 1, item="b"),  # 1 ms outside
    ])
    harness.feed([e(9, "view", T0 + 10 * W, item="z")])  # moves the watermark past all windows
    msgs = consume_all(harness.settings, harness.settings.topics.examples, 4)
    got = {(d := decode_example(m.value()))["example_id"]: d for m in msgs}
    for doc in got.values():
        doc["features"] = example_features(doc)
    assert {k: (v["labels"]["click"], v["labels"]["purchase"]) for k, v in got.items()} == {
        "e1": (1, 0), "e3": (0, 0), "e5": (1, 1), "e8": (1, 0)}
    assert all(m.key() == b"u1" for m in msgs)
    # Features as of the view: the purchase of c and the click on a come later, so they are absent.
    assert got["e5"]["features"]["user_purchase_1h"] == 0.0
    assert got["e1"]["features"]["item_click_1h"] == 0.0
    assert got["e1"]["features"]["user_view_1h"] > 0.0  # the earlier view of d counts
    assert got["e8"]["trace"]["event_ts"] == T0 + 20
    stats = harness.stats()
    # Unmatched at arrival: e7 (its view came later) and e4 (window closed).
    assert (stats["unmatched_followups"], stats["out_of_order"], stats.get("late", 0)) == (2, 1, 0)
    assert stats["examples"] == 4 and stats["processed"] == 9 and stats["examples_positive"] == 3


def test_late_events_are_counted_and_still_update_features(harness: Harness) -> None:
    harness.feed([e(1, "view", T0 + 10 * W, item="a"), e(2, "view", T0, item="b")])
    stats = harness.stats()
    assert stats["late"] == 1 and stats["out_of_order"] == 1
    assert harness.hash("i:b")["n.view"] == "1"


def test_bad_input_goes_to_the_dlq_with_a_reason(harness: Harness) -> None:
    bad = [b"{oops", b'{"event_id": "x"}', orjson.dumps({**e(1, "view", T0).to_dict(), "event_type": "like"}),
           b"\xff\xfe", b"x" * 5000]
    harness.feed([*bad, e(2, "view", T0)], key=b"u1")
    wrong_key = e(3, "view", T0)
    harness.feed([wrong_key.to_json()], key=b"someone-else")
    dlq = consume_all(harness.settings, harness.settings.topics.dlq, 6)
    reasons = {m.value(): dlq_reason(m.headers())["streamrec.reason"] for m in dlq}
    assert reasons == {bad[0]: "not_json", bad[1]: "missing_field", bad[2]: "unknown_event_type",
                       bad[3]: "not_json", bad[4]: "too_large", wrong_key.to_json(): "key_mismatch"}
    headers = dlq_reason(dlq[0].headers())
    assert headers["streamrec.source"].startswith(harness.settings.topics.events + "/0/")
    assert headers["streamrec.detail"]
    stats = harness.stats()
    assert (stats["processed"], stats["invalid"], stats["accepted"]) == (7, 6, 1)


def test_duplicates_are_dropped_and_redelivery_is_a_no_op(harness: Harness) -> None:
    first = [e(1, "view", T0), e(2, "click", T0 + 10), e(1, "view", T0)]
    harness.feed(first)
    before = (harness.hash("u:u1"), harness.hash("i:i1"), harness.stats())
    result = harness.replay(0, 0, first)  # the same offsets again, as after a crash
    assert not result.applied
    result = harness.replay(0, 1, first[1:])  # overlap: only offset 3 is new, a duplicate id
    harness.feed([e(2, "click", T0 + 10)])
    assert (harness.hash("u:u1"), harness.hash("i:i1")) == before[:2]
    stats = harness.stats()
    assert stats["processed"] == stats["accepted"] + stats["duplicate"] + stats.get("invalid", 0)
    assert stats["duplicate"] == 2 and stats["accepted"] == 2


def test_a_message_handed_over_twice_in_one_batch_counts_once(harness: Harness) -> None:
    # After a broker restart a consumer may deliver a message again within the same batch.
    a, b, c = e(1, "view", T0), e(2, "view", T0 + 10, item="i2"), e(3, "click", T0 + 20)
    msgs = [RawMessage(n, x.key, x.to_json()) for n, x in enumerate((a, b, c))]
    twice = [msgs[0], msgs[1], msgs[1], msgs[2], msgs[0]]
    result = harness.loop.run_until_complete(harness.processor.process(0, twice))
    assert result.applied
    stats = harness.stats()
    assert (stats["processed"], stats["accepted"], stats.get("duplicate", 0)) == (3, 3, 0)
    assert harness.hash("i:i1")["n.view"] == "1"


def test_implicit_mode_positive_plus_sampled_negatives(stack: Settings) -> None:
    settings = stack.with_values({"stream.label_mode": "implicit", "stream.negatives": "2"})
    h = Harness(settings)
    try:
        h.feed([e(n, "purchase", T0 + n, user=f"w{n}", item=f"p{n % 5}") for n in range(20)])
        h.feed([e(100, "purchase", T0 + 100, user="buyer", item="p1")])
        # The first batch samples from an empty popularity table (read before the batch), so only
        # the buyer's purchase gets negatives: 20 + 1 positives, 2 negatives.
        msgs = consume_all(settings, settings.topics.examples, 23)
        assert len(msgs) == 23
        docs = [decode_example(m.value()) for m in msgs]
        mine = [d for d in docs if d["user_id"] == "buyer"]
        assert [d["sampled"] for d in mine] == [False, True, True]
        assert mine[0]["labels"] == {"click": 1, "purchase": 1} and mine[0]["item_id"] == "p1"
        assert all(d["labels"] == {"click": 0, "purchase": 0} and d["item_id"] != "p1"
                   for d in mine[1:])
    finally:
        h.close()


def test_trending_list_orders_by_decayed_count_and_is_the_negative_pool(stack: Settings) -> None:
    hl = H // 10  # short enough that 80 half-lives stay inside the validator's future limit
    settings = stack.with_values({"stream.label_mode": "implicit", "stream.negatives": "2",
                                  "stream.negative_pool": "2",
                                  "stream.trending_half_life_ms": str(hl)})
    h = Harness(settings)
    key = settings.redis.key_prefix + "trend"

    def trending() -> list[tuple[str, float]]:
        raw = h.loop.run_until_complete(h.client.zrevrange(key, 0, -1, withscores=True))
        return [(m.decode(), s) for m, s in raw]

    try:
        # All-time, "old" is the most popular (10 purchases); ten half-lives later it is cold.
        h.feed([e(n, "purchase", T0, user=f"w{n}", item="old") for n in range(10)])
        h.feed([e(20, "purchase", T0 + 10 * hl, user="a", item="hot"),
                e(21, "purchase", T0 + 10 * hl, user="b", item="hot"),
                e(22, "purchase", T0 + 10 * hl, user="c", item="warm")])
        assert [i for i, _ in trending()] == ["hot", "warm", "old"]
        scores = dict(trending())
        assert scores["hot"] / scores["warm"] == pytest.approx(2.0, rel=1e-12)
        assert scores["warm"] / scores["old"] == pytest.approx(2 ** 10 / 10, rel=1e-12)
        # Negatives come from the two trending items, never from the cold all-time favourite.
        h.feed([e(30, "purchase", T0 + 10 * hl, user="buyer", item="x")])
        docs = [decode_example(m.value()) for m in consume_all(settings, settings.topics.examples, 16)]
        assert sorted(d["item_id"] for d in docs if d["user_id"] == "buyer" and d["sampled"]) == [
            "hot", "warm"]
        # 80 half-lives on, the scores are rebased to the new event: finite, same order.
        h.feed([e(40, "view", T0 + 80 * hl, user="d", item="late")])
        after = trending()
        assert [i for i, _ in after][:2] == ["late", "hot"]
        assert dict(after)["late"] == 1.0
        assert dict(after)["hot"] / dict(after)["warm"] == pytest.approx(2.0, rel=1e-12)
        t0 = h.loop.run_until_complete(h.client.get(key + ":t0"))
        assert int(t0) == T0 + 80 * hl
        assert h.stats()["accepted"] == 15
    finally:
        h.close()


@pytest.mark.parametrize("sources", ["trending", "candidates"])
def test_negatives_come_from_the_scorers_candidate_sources_when_asked(
        stack: Settings, sources: str) -> None:
    settings = stack.with_values({
        "stream.label_mode": "implicit", "stream.negatives": "3", "stream.negative_pool": "1",
        "stream.negative_sources": sources, "serving.new_candidates": "1",
        "serving.popular_candidates": "1"})
    h = Harness(settings)
    try:
        # "hot": trending and popular; "c1": co-visited with "s"; "newest": the newest item;
        # "cold*": in no list the buyer's candidates come from.
        h.feed([e(n, "purchase", T0 + n, user=f"w{n}", item="hot") for n in range(10)]
               + [e(20 + n, "purchase", T0 + 20, user=f"v{n}", item=f"cold{n}") for n in range(3)]
               + [e(30, "view", T0 + 30, user="x", item="s"),
                  e(31, "view", T0 + 31, user="x", item="c1"),
                  e(32, "view", T0 + 40, user="y", item="newest")])
        h.feed([e(40, "view", T0 + 50, user="b", item="s")])
        h.feed([e(50 + n, "purchase", T0 + 60, user="b", item=f"p{n}") for n in range(5)])
        # 13 + 5 positives; 3 negatives per purchase of "b" (2 when only "hot" and "s" exist)
        expected = 13 + 5 + (10 if sources == "trending" else 15)
        docs = [decode_example(m.value())
                for m in consume_all(settings, settings.topics.examples, expected)]
        assert len(docs) == expected
        negatives = [d["item_id"] for d in docs if d["user_id"] == "b" and d["sampled"]]
        if sources == "trending":  # own items and the trending pool only
            assert sorted(set(negatives)) == ["hot", "s"] and len(negatives) == 10
        else:  # also co-visitation of the recent items, the new and the popular lists
            assert set(negatives) == {"c1", "hot", "newest", "s"} and len(negatives) == 15
    finally:
        h.close()


def test_neighbour_list_items_are_negatives_and_carry_their_scores(
        stack: Settings, redis_client) -> None:
    from streaming.contract.examples import example_features
    from streaming.contract.names import Keys

    settings = stack.with_values({"stream.label_mode": "implicit", "stream.negatives": "3",
                                  "stream.negative_pool": "1"})
    h = Harness(settings)
    try:
        h.feed([e(n, "purchase", T0 + n, user=f"w{n}", item="hot") for n in range(3)])
        # As the neighbour job would write it: "nb1" is in no other list the buyer's draw uses.
        redis_client.zadd(Keys(settings.redis.key_prefix).neighbours("b"),
                          {"nb1": 0.4, "hot": 0.25})
        h.feed([e(10 + n, "purchase", T0 + 10, user="b", item=f"p{n}") for n in range(5)])
        # 3 + 5 positives; 2 negatives per purchase of "b" (only "hot" and "nb1" to draw from)
        docs = [decode_example(m.value()) for m in consume_all(settings, settings.topics.examples,
                                                               3 + 5 + 10)]
        scores = {(d["item_id"], d["sampled"]): example_features(d)["nb_score"]
                  for d in docs if d["user_id"] == "b"}
        assert scores == {("nb1", True): 0.4, ("hot", True): 0.25,
                          **{(f"p{n}", False): 0.0 for n in range(5)}}
    finally:
        h.close()


def test_user_item_state_matches_the_python_rule_and_stays_bounded(stack: Settings) -> None:
    from streaming.features.state import DEFAULT_FEATURES, parse_user_items, touch_user_item

    h = Harness(stack.with_values({"stream.user_items_kept": "2"}))
    try:
        hl = DEFAULT_FEATURES.user_item_half_life_ms
        events = [e(1, "view", T0 + 5_000, item="a"), e(2, "purchase", T0 + 9_000, item="a"),
                  e(3, "click", T0 + 1_000, item="a"),  # out of order
                  e(4, "view", T0 + 2 * H, item="b")]
        h.feed(events)
        stored = parse_user_items(h.hash("ui:u1").items())
        expected = None
        for ev in events[:3]:
            expected = touch_user_item(expected, ev.event_type, ev.ts,
                                       {"view": 1.0, "click": 3.0, "purchase": 10.0}[ev.event_type],
                                       hl)
        assert stored["a"] == expected  # the Lua op and the Python rule agree, bit for bit
        # Bounded: beyond 2K = 4 items the lightest are dropped back to K = 2 (hash and zset).
        h.feed([e(10 + n, "view", T0 + 3 * H + n, item=f"x{n}") for n in range(3)])
        stored = parse_user_items(h.hash("ui:u1").items())
        order = h.loop.run_until_complete(h.client.zrevrange(
            h.settings.redis.key_prefix + "uz:u1", 0, -1))
        assert set(stored) == {m.decode() for m in order}
        assert len(stored) == 2 and "a" in stored  # a (bought: weight 14) is the heaviest
    finally:
        h.close()


def test_a_batch_reads_only_the_user_x_item_entries_it_asks_for(harness: Harness) -> None:
    """Exposure labelling reads a user's x item entries only for the items of the user's own
    events in the batch (HMGET in read.lua; the hash holds up to 400 entries, and reading it
    whole was most of the script's time and of the worker's small objects), and those entries
    equal what the whole hash holds; implicit labelling reads the whole hash."""
    from streaming.features.state import parse_user_items

    harness.feed([e(n, "view", T0 + n, item=f"i{n}") for n in range(1, 8)])
    whole = parse_user_items(harness.hash("ui:u1").items())
    assert len(whole) == 7

    def read(user_items_of: dict[str, set[str]] | None) -> dict[str, Any]:
        return harness.loop.run_until_complete(harness.store.read_batch(
            0, [], ["u1", "u2"], [], [], 5, user_items_of=user_items_of)).user_items

    assert read({"u1": {"i3", "i5", "absent"}}) == {"u1": {"i3": whole["i3"], "i5": whole["i5"]},
                                                     "u2": {}}
    assert read({"u1": set()}) == {"u1": {}, "u2": {}}
    assert read(None) == {"u1": whole, "u2": {}}
