"""Records of the ingest stage: a consumed message, a planned batch, the state a batch reads,
and a record to produce (with its binary-safe outbox framing)."""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from streaming.features.labels import Exposure
from streaming.features.state import UserItem

__all__ = ["BatchReads", "Op", "OutMessage", "OutboxSink", "Plan", "RawMessage", "Undeliverable"]

# ``[name, key, args...]``, interpreted by ``lua/apply.lua``: each name takes a fixed number
# of arguments, except ``dadd`` and ``changed``, whose variable part follows a count.
Op = list[Any]


@dataclass(frozen=True, slots=True)
class RawMessage:
    """One consumed Kafka message of the events topic."""

    offset: int
    key: bytes | None
    value: bytes
    timestamp_ms: int | None = None


@dataclass(frozen=True, slots=True)
class OutMessage:
    """A record to produce after the apply commits (example or DLQ entry)."""

    topic: str
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()

    def encode(self) -> bytes:
        """Length-prefixed framing: binary-safe for arbitrary keys and values (DLQ bytes)."""
        parts = [self.topic.encode(), self.key if self.key is not None else b"",
                 orjson.dumps([[k, v.decode("latin-1")] for k, v in self.headers]), self.value]
        head = struct.pack(">B4I", 1 if self.key is not None else 0, *(len(p) for p in parts))
        return head + b"".join(parts)

    @classmethod
    def decode(cls, raw: bytes) -> OutMessage:
        """Inverse of :meth:`encode`."""
        has_key, *lens = struct.unpack_from(">B4I", raw)
        pos = struct.calcsize(">B4I")
        parts = []
        for n in lens:
            parts.append(raw[pos:pos + n])
            pos += n
        headers = tuple((k, v.encode("latin-1")) for k, v in orjson.loads(parts[2]))
        return cls(parts[0].decode(), parts[1] if has_key else None, parts[3], headers)


@dataclass(slots=True)
class BatchReads:
    """State that one batch needs, read in one round trip (``lua/read.lua``) before planning."""

    applied_offset: int
    max_ts: int | None
    seen: set[str]
    users: dict[str, dict[str, str]]
    recent: dict[str, list[str]]
    items: dict[str, dict[str, str]]
    pending: dict[str, list[Exposure]]
    followups: dict[str, list[tuple[str, int]]]
    trending: list[tuple[str, float]] = field(default_factory=list)  # hottest first
    # user -> item -> (views, clicks, purchases, last ms, weight): the user x item state
    user_items: dict[str, dict[str, UserItem]] = field(default_factory=dict)
    # user -> item -> score: the user's neighbour list (absent: none yet)
    neighbours: dict[str, dict[str, float]] = field(default_factory=dict)
    expired_followups: list[str] = field(default_factory=list)



@dataclass(slots=True)
class Plan:
    """What one batch does: ops for the atomic apply, records to produce, counters."""

    ops: list[Op]
    outbox: list[OutMessage]
    counts: Counter[str]
    examples: int


@dataclass(frozen=True, slots=True)
class Undeliverable:
    """A record the broker refused for good (e.g. larger than its ``message.max.bytes``):
    ``index`` into the records sent, the broker's ``error``. Retrying it cannot succeed."""

    index: int
    error: str


class OutboxSink(Protocol):
    """Produces outbox records and returns once each is acknowledged or refused for good."""

    async def send_all(self, messages: Sequence[OutMessage]) -> Sequence[Undeliverable] | None:
        """Produce ``messages`` and wait for every acknowledgement. Returns the records refused
        for good (None or empty: all delivered); raises
        :class:`~streaming.errors.DeliveryError` for failures a retry may fix."""
        ...
