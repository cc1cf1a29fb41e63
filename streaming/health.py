"""Component heartbeats in Redis, so that `streamrec up` (and operators) can tell when every
part of the loop is consuming.

``P health`` is a hash: field ``<component>:<host>:<pid>``, value JSON ``{"component", "ts_ms",
"assigned"}`` where ``assigned`` is how many partitions the component's consumer owns. Components
beat every second or so; a beat older than a few seconds means the process is gone or stuck.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterable
from typing import Any

import orjson

STALE_MS = 10_000


def key(prefix: str) -> str:
    return f"{prefix}health"


def beat_field(component: str) -> str:
    return f"{component}:{socket.gethostname()}:{os.getpid()}"


def beat_value(component: str, assigned: int, now_ms: int | None = None) -> bytes:
    return orjson.dumps({"component": component, "assigned": assigned,
                         "ts_ms": now_ms if now_ms is not None else int(time.time() * 1000)})


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


def consuming(beats: Iterable[dict[str, Any]], now_ms: int, stale_ms: int = STALE_MS) -> set[str]:
    """Components with a recent beat that own at least one partition."""
    return {b["component"] for b in beats
            if b.get("assigned", 0) > 0 and now_ms - int(b.get("ts_ms", 0)) <= stale_ms}
