"""Scoring and feeds on real Redis/Kafka: no training/serving skew, atomic feed replacement."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

from models.batch import BatchBuilder, id_keys
from models.checkpoint import ID_MAPS_FILE, Manifest, pack_id_maps, write_checkpoint
from models.dlrm import StreamRecModel
from models.id_map import IdMap
from models.spec import DEFAULT_SPEC, spec_for
from streaming.contract.examples import decode_example, example_features
from streaming.contract.feeds import Feed, FeedItem
from streaming.contract.names import Keys
from streaming.serving.feed_store import FeedStore
from streaming.serving.neighbour_job import NeighbourJob
from streaming.serving.ranker import FeedRanker, ModelHolder
from streaming.serving.worker import ScorerWorker
from streaming.settings import ServingSettings, Settings
from tests.integration.helpers import consume_all
from tests.integration.test_processor import Harness, e

pytestmark = pytest.mark.integration
T0 = 1_732_000_000_000
W = 60_000


def served_with_id_maps(tmp_path: Path, users: list[str], items: list[str]
                        ) -> tuple[ModelHolder, dict[str, IdMap]]:
    """A scorer's holder serving a checkpoint whose id maps admitted ``users`` and ``items``
    (as the trainer's would have), and those maps."""
    spec = spec_for(mapped_tables=("t_user", "t_item"))
    maps = {"t_user": IdMap(spec.table_of("user_id").num_embeddings),
            "t_item": IdMap(spec.table_of("item_id").num_embeddings)}
    maps["t_item"].admit(id_keys(["zz0", "zz1", *items]))  # rows other than a fresh map's
    maps["t_user"].admit(id_keys(users))
    path = write_checkpoint(tmp_path, StreamRecModel(spec).state_dict(), Manifest(
        version=1, created_at_ms=1, step=1, examples_seen=1, offsets={}, metrics={},
        spec_digest=spec.digest()), keep=2, blobs={ID_MAPS_FILE: pack_id_maps(maps)})
    holder = ModelHolder(spec)
    assert holder.load(path, 1), holder.last_error
    return holder, maps


@pytest.mark.parametrize("mapped", [False, True], ids=["hashed", "id-maps"])
def test_scorer_inputs_equal_the_training_example_for_the_same_state(
        stack: Settings, redis_client, mapped: bool, tmp_path: Path) -> None:
    settings = stack.with_values({"stream.attribution_window_ms": str(W),
                                  "stream.allowed_lateness_ms": "1000"})
    h = Harness(settings)
    try:
        # History: u1 and others interact with i1..i3 (categories, clicks, co-visits).
        h.feed([e(1, "view", T0, item="i1", category="shoes"),
                e(2, "click", T0 + 1_000, item="i1", category="shoes"),
                e(3, "view", T0 + 2_000, item="i2", category="hats"),
                e(4, "view", T0 + 3_000, user="u2", item="i3", category="shoes"),
                e(5, "purchase", T0 + 4_000, user="u2", item="i3", category="shoes"),
                e(8, "view", T0 + 5_000, user="u2", item="i1", category="shoes")])
        t_view = T0 + 10_000
        # u2 shares i1 with u1: u1's neighbour list holds u2's i3, and the example and the
        # scorer must both read its score.
        NeighbourJob(redis_client, Keys(settings.redis.key_prefix), ServingSettings()).run(t_view)
        spec, holder, maps = DEFAULT_SPEC, ModelHolder(), {}
        if mapped:  # rows from the served checkpoint's id maps instead of hashing
            holder, maps = served_with_id_maps(tmp_path, ["u1", "u2"], ["i1", "i2", "i3"])
            spec = holder.spec
        ranker = FeedRanker(redis_client, settings.redis.key_prefix, holder)
        serving = ranker.model_inputs(ranker.read_user("u1", t_view), ["i3"], t_view)
        # Now the event whose example snapshots that same state: u1 views i3 at t_view.
        h.feed([e(6, "view", t_view, item="i3"), e(7, "view", t_view + 10 * W, item="zz")])
        # Windows closed by then: u1's views e1, e3, e6 and u2's views e4, e8 (e7's is open).
        docs = [decode_example(m.value()) for m in consume_all(settings, settings.topics.examples, 5)]
        example = next(d for d in docs if d["example_id"] == "e6")
        training = BatchBuilder(spec, maps).build([example])
        assert torch.equal(training.dense, serving.dense)  # bit for bit
        # The neighbour list's score, on both sides.
        assert example_features(example)["nb_score"] > 0
        t_kjt, s_kjt = training.sparse.to_dict(), serving.sparse.to_dict()
        for key in spec.sparse:
            assert torch.equal(t_kjt[key].values(), s_kjt[key].values()), key
            assert torch.equal(t_kjt[key].lengths(), s_kjt[key].lengths()), key
        if mapped:  # the maps' own rows (small numbers), not hashed ones nor the unknown row
            for key, table, ident in (("user_id", "t_user", "u1"), ("item_id", "t_item", "i3")):
                row = maps[table].lookup(id_keys([ident])).tolist()
                assert t_kjt[key].values().tolist() == row and 0 < row[0] < 10, key
    finally:
        h.close()


def test_candidates_reflect_behaviour_and_exclude_purchases(stack: Settings, redis_client) -> None:
    """With ``serving.repeat=exclude_purchased`` (the default is ``allow``, see the next test)."""
    h = Harness(stack)
    try:
        now = T0 + 100_000
        # Others co-visit a -> b; u1 then views a and buys c.
        h.feed([e(n, "view", T0 + n, user=f"o{n}", item="a") for n in range(5)]
               + [e(10 + n, "view", T0 + 100 + n, user=f"o{n}", item="b") for n in range(5)]
               + [e(20, "view", T0 + 1_000, item="a"), e(21, "purchase", T0 + 2_000, item="c")])
        ranker = FeedRanker(redis_client, stack.redis.key_prefix, ModelHolder(),
                            serving=ServingSettings(repeat="exclude_purchased"))
        feed = ranker.rank("u1", now)
        assert feed is not None and feed.model_version is None  # no model published yet
        ids = [i.item_id for i in feed.items]
        assert "b" in ids and dict((i.item_id, i.source) for i in feed.items)["b"] == "covisit"
        assert "c" not in ids  # bought
        assert feed.source_event_ts_ms == T0 + 2_000
    finally:
        h.close()


def test_the_fallback_feed_is_the_trending_list_with_shares_as_scores(
        stack: Settings, redis_client) -> None:
    h = Harness(stack)
    try:
        h.feed([e(n, "view", T0 + n, user=f"o{n}", item="a") for n in range(3)]
               + [e(10, "view", T0 + 10, user="o9", item="b")])
        feed = FeedRanker(redis_client, stack.redis.key_prefix, ModelHolder()).popular_feed()
        assert feed is not None and feed.model_version is None
        assert [(i.item_id, i.source) for i in feed.items] == [("a", "trending"),
                                                               ("b", "trending")]
        assert feed.items[0].score > feed.items[1].score > 0
        assert sum(i.score for i in feed.items) == pytest.approx(1.0, abs=1e-5)
    finally:
        h.close()


def test_item_state_is_cached_until_ingest_changes_it(stack: Settings, redis_client) -> None:
    """The scorer re-reads an item's hash only when the item change log names it, however long
    it has been cached; a log trimmed past its cursor drops the whole cache."""
    h = Harness(stack.with_values({"stream.item_changes_kept": "2"}))
    try:
        h.feed([e(1, "view", T0, item="a"), e(2, "view", T0 + 1, item="b")])
        ranker = FeedRanker(redis_client, stack.redis.key_prefix, ModelHolder(),
                            serving=ServingSettings(cache_s=3_600.0))
        assert ranker.read_items(["a", "b"])["a"].state["n.view"] == 1
        assert ranker.item_reads == 2
        ranker.read_items(["a", "b"])
        assert ranker.item_reads == 2  # nothing changed: both from the cache
        h.feed([e(3, "view", T0 + 2, user="u2", item="a")])
        cached = ranker.read_items(["a", "b"])
        assert ranker.item_reads == 3 and cached["a"].state["n.view"] == 2  # a re-read, b not
        # Five more items in one batch: the log (6 > 2 x 2 entries) is trimmed back to 2, past
        # this scorer's cursor, so it cannot know what else changed and reads everything again.
        h.feed([e(10 + n, "view", T0 + 10 + n, item=f"x{n}") for n in range(5)])
        ranker.read_items(["a", "b"])
        assert ranker.item_reads == 5
        ranker.read_items(["a", "b"])
        assert ranker.item_reads == 5
    finally:
        h.close()


def test_the_scorer_worker_exports_its_item_cache_lookups_and_misses(stack: Settings) -> None:
    h = Harness(stack)
    scorer = ScorerWorker(stack)
    try:
        h.feed([e(1, "view", T0, item="a"), e(2, "view", T0 + 1, user="u2", item="b")])
        m = scorer.metrics
        for expected_reads in (2, 2):  # the second refresh finds both items in the cache
            scorer.pending["u1"] = (0, time.monotonic())  # a re-score: ready at once
            scorer._refresh(10.0, threading.Event())
            assert scorer.feeds_written > 0 and "u1" not in scorer.pending
            assert m.item_reads._value.get() == expected_reads
        assert m.item_lookups._value.get() == 4  # a and b, twice
    finally:
        scorer.client.close()
        h.close()


def test_repeat_policy_allow_offers_the_users_own_items_again(stack: Settings,
                                                              redis_client) -> None:
    h = Harness(stack)
    try:
        # u1 bought "old" long ago, then browsed 6 other items: "old" is no longer among the
        # recent items, but it is in the user x item state ("again").
        h.feed([e(1, "purchase", T0, item="old")]
               + [e(10 + n, "view", T0 + 1_000 + n, item=f"v{n}") for n in range(6)])
        now = T0 + 100_000
        allow = FeedRanker(redis_client, stack.redis.key_prefix, ModelHolder()).rank("u1", now)
        assert allow is not None
        sources = {i.item_id: i.source for i in allow.items}
        assert sources["old"] == "again"
        for policy in ("exclude_purchased", "exclude_interacted"):
            ranker = FeedRanker(redis_client, stack.redis.key_prefix, ModelHolder(),
                                serving=ServingSettings(repeat=policy))
            feed = ranker.rank("u1", now)
            ids = [i.item_id for i in feed.items] if feed else []
            assert "old" not in ids, policy
            assert ("v0" in ids) == (policy == "exclude_purchased"), policy
    finally:
        h.close()


def test_user_item_features_are_the_same_in_training_and_serving(stack: Settings,
                                                                  redis_client) -> None:
    settings = stack.with_values({"stream.label_mode": "implicit", "stream.negatives": "0"})
    h = Harness(settings)
    try:
        # u1's history with i1 (two views, a purchase) and i2; then u1 buys i1 again at t.
        h.feed([e(1, "view", T0, item="i1", category="shoes", price=5.0),
                e(2, "view", T0 + 60_000, item="i1"),
                e(3, "purchase", T0 + 120_000, item="i1", price=5.0),
                e(4, "click", T0 + 180_000, item="i2", category="hats")])
        t = T0 + 3_600_000
        ranker = FeedRanker(redis_client, settings.redis.key_prefix, ModelHolder())
        reads = ranker.read_user("u1", t)
        assert reads.user_items["i1"][:3] == (2.0, 0.0, 1.0)
        serving = ranker.model_inputs(reads, ["i1"], t)
        h.feed([e(5, "purchase", t, item="i1", price=5.0)])
        docs = [decode_example(m.value()) for m in consume_all(settings, settings.topics.examples, 3)]
        example = next(d for d in docs if d["example_id"] == "e5")
        training = BatchBuilder(DEFAULT_SPEC).build([example])
        assert torch.equal(training.dense, serving.dense)  # bit for bit, user x item included
        names = list(DEFAULT_SPEC.dense)
        assert training.dense[0, names.index("ui_purchase_count")] > 0
    finally:
        h.close()


def test_readers_never_see_a_partial_feed(stack: Settings, redis_client) -> None:
    store = FeedStore(redis_client, stack.redis.key_prefix)
    stop = threading.Event()
    problems: list[str] = []
    reads = [0]

    def reader() -> None:
        from streaming.io.redis_client import connect

        client = connect(stack.redis)
        mine = FeedStore(client, stack.redis.key_prefix)
        while not stop.is_set():
            feed = mine.read("hammer", fallback=False)
            if feed is None:
                continue
            reads[0] += 1
            generations = {i.source for i in feed.items}
            if len(generations) != 1 or len(feed.items) != feed.sources.get("n"):
                problems.append(f"mixed feed: {generations} {len(feed.items)}")
        client.close()

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for gen in range(300):
        size = 10 + gen % 40
        store.write(Feed("hammer", [FeedItem(f"i{k}", 1.0 / (k + 1), f"g{gen}")
                                    for k in range(size)], sources={"n": size}))
    stop.set()
    for t in threads:
        t.join()
    assert reads[0] > 100 and not problems, problems[:3]
