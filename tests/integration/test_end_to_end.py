"""The whole loop as a user runs it: `streamrec up`, then events for one user, then their feed."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import orjson
import pytest

from streaming.contract.events import Event
from streaming.contract.feeds import Feed
from streaming.io.producer import EventProducer
from streaming.io.redis_client import connect
from streaming.serving.feed_store import FeedStore
from tests.integration.helpers import start_up, wait_for

pytestmark = pytest.mark.integration


def test_events_change_the_users_feed_and_new_models_reach_it(tmp_path: Path) -> None:
    # 40 events/s: within one scorer's capacity on this machine, so the test checks behaviour;
    # capacity under load is `streamrec bench freshness`'s subject.
    up, _, settings = start_up(
        tmp_path, "--rate", "40",
        "--set", "stream.attribution_window_ms=2000", "--set", "stream.allowed_lateness_ms=300",
        "--set", "trainer.publish_interval_s=4", "--set", "trainer.batch_size=64",
        # A purchase must visibly change the feed: the bought item leaves it (the default
        # policy, allow, lets the model rank repeats instead).
        "--set", "serving.repeat=exclude_purchased",
        "--set", f"trainer.checkpoint_dir={tmp_path / 'ckpt'}")
    assert settings is not None
    sent: list[Event] = []
    try:
        client = connect(settings.redis)
        feeds = FeedStore(client, settings.redis.key_prefix)

        def model_version() -> int:
            return int(client.hget(f"{settings.redis.key_prefix}scorer:stats", "model_version") or 0)

        wait_for("a first model", model_version, 90)
        popular = wait_for("the popular fallback feed", lambda: feeds.read("probe"), 30)
        assert popular.fallback and popular.items

        def act(n: int, kind: str, item: str) -> Event:
            event = Event(f"probe-{n}", "probe", item, kind, int(time.time() * 1000))
            with EventProducer(settings) as producer:
                producer.send(event)
            sent.append(event)
            return event

        def feed_after(event: Event) -> Feed | None:
            feed = feeds.read("probe", fallback=False)
            return feed if feed and (feed.source_event_ts_ms or 0) >= event.ts else None

        hot = popular.items[0].item_id
        viewed = act(1, "view", hot)
        started = time.monotonic()
        first = wait_for("the probe user's own feed", lambda: feed_after(viewed), 20)
        assert time.monotonic() - started < 20
        assert first.model_version is not None and first.items

        bought = act(2, "purchase", first.items[0].item_id)
        second = wait_for("a feed after the purchase", lambda: feed_after(bought), 20)
        assert first.items[0].item_id not in [i.item_id for i in second.items]

        v = second.model_version
        wait_for("a newer model", lambda: model_version() > v, 60)
        third = None
        for n in range(3, 8):  # each new event (fresh id) triggers a re-score with the new model
            event = act(n, "view", hot)
            third = wait_for("the feed after a new event", lambda e=event: feed_after(e), 20)
            if third.model_version > v:
                break
        assert third is not None and third.model_version > v
        client.close()
    finally:
        up.send_signal(signal.SIGINT)
        out, _ = up.communicate(timeout=90)
    assert up.returncode == 0, out[-3000:]
    summary = orjson.loads(out.strip().splitlines()[-1])
    assert summary["feeds_written"] > 0 and summary["checkpoints"] >= 2
    assert summary["model_version"] >= 2 and summary["train_steps"] > 0
    assert summary["processed"] == summary["emitted"] + len(sent)  # the probe's events too
