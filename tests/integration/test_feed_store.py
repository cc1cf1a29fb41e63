from __future__ import annotations

import pytest

from streaming.contract.feeds import Feed, FeedItem
from streaming.contract.names import POPULAR_FEED as POPULAR
from streaming.serving.feed_store import FeedStore
from streaming.settings import Settings
from tests.integration.helpers import cli_env, run_cli

pytestmark = pytest.mark.integration


def test_feed_write_read_and_popular_fallback(stack: Settings, redis_client) -> None:
    store = FeedStore(redis_client, stack.redis.key_prefix, ttl_s=60)
    assert store.read("u1") is None
    store.write(Feed(POPULAR, [FeedItem("top", 1.0, "popular")], generated_at_ms=5))
    fallback = store.read("u1")
    assert fallback is not None and fallback.fallback and fallback.items[0].item_id == "top"
    assert store.read("u1", fallback=False) is None
    store.write(Feed("u1", [FeedItem("i9", 0.7, "covisit")], model_version=2, generated_at_ms=6))
    mine = store.read("u1")
    assert mine is not None and not mine.fallback and mine.model_version == 2
    assert 0 < redis_client.pttl(store.key("u1")) <= 60_000


def test_feed_command_prints_the_feed_or_says_there_is_none(stack: Settings, redis_client) -> None:
    env = cli_env(stack)
    missing = run_cli(["feed", "nobody", "--no-fallback"], env)
    assert missing.returncode == 1 and "no feed for user 'nobody'" in missing.stderr
    FeedStore(redis_client, stack.redis.key_prefix).write(
        Feed("u5", [FeedItem("i1", 0.9, "covisit"), FeedItem("i2", 0.4, "popular")],
             model_version=4, generated_at_ms=1))
    shown = run_cli(["feed", "u5"], env)
    assert shown.returncode == 0, shown.stderr
    assert "model v4" in shown.stdout and "1. i1" in shown.stdout and "2. i2" in shown.stdout
