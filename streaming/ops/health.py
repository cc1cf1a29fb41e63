"""Component heartbeats in Redis, so that `streamrec up` (and operators) can tell when every
part of the loop is consuming.

``P health`` is a hash: field ``<component>:<host>:<pid>``, value JSON ``{"component", "ts_ms",
"assigned"}`` where ``assigned`` is how many partitions the component's consumer owns. Components
beat every second or so; a beat older than a few seconds means the process is gone or stuck.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Iterable
from typing import Any

import orjson
import redis

from streaming.contract.names import Keys

log = logging.getLogger(__name__)

STALE_MS = 10_000


def key(prefix: str) -> str:
    """The heartbeat hash under ``prefix``."""
    return Keys(prefix).health


def beat_field(component: str) -> str:
    """This process's field in the heartbeat hash: ``<component>:<host>:<pid>``."""
    return f"{component}:{socket.gethostname()}:{os.getpid()}"


def beat_value(component: str, assigned: int, now_ms: int | None = None) -> bytes:
    """A beat as stored (JSON); ``assigned`` is how many partitions the component's consumer owns,
    ``now_ms`` defaults to the wall clock (ms)."""
    return orjson.dumps({"component": component, "assigned": assigned,
                         "ts_ms": now_ms if now_ms is not None else int(time.time() * 1000)})


class Heartbeat:
    """Beats for one process from a synchronous loop, at most every ``every_s`` seconds."""

    def __init__(self, client: redis.Redis, prefix: str, component: str, *, instance: str = "",
                 every_s: float = 1.0) -> None:
        self._client = client
        self._key = key(prefix)
        self.component = component
        self._field = beat_field(instance or component)
        self._every_s = every_s
        self._last = -math.inf

    def beat(self, assigned: int) -> bool:
        """Write a beat if one is due; False when Redis refused it (logged, never raised: a
        missed beat must not stop the work it reports on)."""
        if time.monotonic() - self._last < self._every_s:
            return True
        self._last = time.monotonic()
        try:
            self._client.hset(self._key, self._field, beat_value(self.component, assigned))
        except redis.RedisError as exc:
            log.warning("heartbeat not written: %s", exc)
            return False
        return True


def parse(raw: dict[Any, Any]) -> list[dict[str, Any]]:
    """``HGETALL P health`` -> beats (unreadable entries are skipped)."""
    out = []
    for field, value in raw.items():
        try:
            doc = orjson.loads(value)
            doc["id"] = field.decode() if isinstance(field, bytes) else str(field)
            out.append(doc)
        except (orjson.JSONDecodeError, TypeError):
            continue
    return out


def consuming(beats: Iterable[dict[str, Any]], now_ms: int, stale_ms: int = STALE_MS,
              since_ms: int = 0) -> set[str]:
    """Components with a recent beat that own at least one partition; with ``since_ms``, only
    beats written at or after it (a process started then, not one of an earlier run whose
    beats are still recent)."""
    return {b["component"] for b in beats
            if b.get("assigned", 0) > 0 and now_ms - int(b.get("ts_ms", 0)) <= stale_ms
            and int(b.get("ts_ms", 0)) >= since_ms}
