from __future__ import annotations

from streaming.contract.feeds import Feed, FeedItem


def test_feed_document_roundtrip() -> None:
    feed = Feed("u1", [FeedItem("i1", 0.9, "covisit"), FeedItem("i2", 0.5, "popular")],
                model_version=3, generated_at_ms=1, source_event_ts_ms=2, sources={"covisit": 1})
    assert Feed.from_json(feed.to_json()) == feed
    assert Feed.from_json(feed.to_json(), fallback=True).fallback
