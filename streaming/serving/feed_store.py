"""Per-user ranked feeds in Redis: layout, atomic replace, and the read helper for apps.

Layout (``P`` = ``redis.key_prefix``, default ``sr:``):

``P feed:<user_id>``
    one string holding a JSON document, written with a single ``SET ... PX ttl``:
    ``{"user_id", "items": [{"item_id", "score", "source"}], "model_version",
    "generated_at_ms", "source_event_ts_ms", "sources": {source: count}}``.
    A single-key write is atomic, so a reader never sees a partial feed.
``P feed:_popular``
    the fallback feed for users without one, the items trending now (same document,
    ``user_id`` = ``"_popular"``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
import redis

from streaming.io.redis_client import call

POPULAR = "_popular"


@dataclass(frozen=True, slots=True)
class FeedItem:
    item_id: str
    score: float
    source: str = ""


@dataclass(frozen=True, slots=True)
class Feed:
    user_id: str
    items: list[FeedItem]
    model_version: int | None = None
    generated_at_ms: int = 0
    source_event_ts_ms: int | None = None
    sources: dict[str, int] = field(default_factory=dict)
    fallback: bool = False  # True when served from the fallback (trending) feed

    def to_json(self) -> bytes:
        return orjson.dumps({
            "user_id": self.user_id,
            "items": [[i.item_id, i.score, i.source] for i in self.items],
            "model_version": self.model_version,
            "generated_at_ms": self.generated_at_ms,
            "source_event_ts_ms": self.source_event_ts_ms,
            "sources": self.sources,
        })

    @classmethod
    def from_json(cls, raw: bytes, *, fallback: bool = False) -> Feed:
        doc: dict[str, Any] = orjson.loads(raw)
        return cls(
            user_id=doc["user_id"],
            items=[FeedItem(i, float(s), src) for i, s, src in doc["items"]],
            model_version=doc.get("model_version"),
            generated_at_ms=int(doc.get("generated_at_ms", 0)),
            source_event_ts_ms=doc.get("source_event_ts_ms"),
            sources=doc.get("sources") or {},
            fallback=fallback,
        )


class FeedStore:
    """Reads and writes feeds. ``client`` is a redis-py client (bytes responses)."""

    def __init__(self, client: redis.Redis, key_prefix: str = "sr:", ttl_s: float = 86_400) -> None:
        self._r = client
        self._prefix = key_prefix
        self._ttl_ms = int(ttl_s * 1000)

    def key(self, user_id: str) -> str:
        return f"{self._prefix}feed:{user_id}"

    def write(self, feed: Feed) -> None:
        call(lambda: self._r.set(self.key(feed.user_id), feed.to_json(), px=self._ttl_ms),
             "feed write")

    def write_many(self, feeds: list[Feed]) -> None:
        """One round trip; each feed is still its own single-key ``SET`` (atomic per feed)."""

        def run() -> None:
            with self._r.pipeline(transaction=False) as pipe:
                for feed in feeds:
                    pipe.set(self.key(feed.user_id), feed.to_json(), px=self._ttl_ms)
                pipe.execute()

        if feeds:
            call(run, "feed write")

    def read(self, user_id: str, *, fallback: bool = True) -> Feed | None:
        """The user's feed; with ``fallback``, the fallback (trending) feed when the user has none."""
        keys = [self.key(user_id), self.key(POPULAR)] if fallback else [self.key(user_id)]
        raws = call(lambda: self._r.mget(keys), "feed read")
        if raws[0] is not None:
            return Feed.from_json(raws[0])
        if fallback and raws[1] is not None:
            return Feed.from_json(raws[1], fallback=True)
        return None
