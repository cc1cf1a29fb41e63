"""The feed record: a user's ranked items as the scorers write them to Redis and apps read them.

One JSON document per user (key :meth:`streaming.contract.names.Keys.feed`)::

    {"user_id", "items": [[item_id, score, source], ...], "model_version",
     "generated_at_ms", "source_event_ts_ms", "sources": {source: count}}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = ["Feed", "FeedItem"]


@dataclass(frozen=True, slots=True)
class FeedItem:
    """One ranked item: its score (model probability, or a rank-based score without a model)
    and the candidate source that proposed it."""

    item_id: str
    score: float
    source: str = ""


@dataclass(frozen=True, slots=True)
class Feed:
    """A user's ranked feed."""

    user_id: str
    items: list[FeedItem]
    model_version: int | None = None
    generated_at_ms: int = 0
    source_event_ts_ms: int | None = None  # the newest event of the user the feed reflects
    sources: dict[str, int] = field(default_factory=dict)
    fallback: bool = False  # True when served from the fallback (trending) feed

    def to_json(self) -> bytes:
        """The stored form (see the module docstring)."""
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
        """Parse a stored feed; ``fallback`` marks one served in place of the user's own."""
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
