"""The event contract: what apps send to the ``events`` topic.

One JSON object per Kafka message, keyed by ``user_id`` (UTF-8) so that every event of a user lands
on the same partition::

    {"event_id": "9f1c...", "user_id": "u42", "item_id": "sku-7", "event_type": "click",
     "ts": 1732345678123, "price": 19.99, "qty": 1, "category": "shoes",
     "session_id": "s-1", "context": {"device": "ios", "page": 2}}

Required: ``event_id`` (unique; used for de-duplication), ``user_id``, ``item_id`` (non-empty
strings), ``event_type`` (``view`` | ``click`` | ``purchase``), ``ts`` (event time, integer epoch
milliseconds). Optional: ``price`` (finite float >= 0), ``qty`` (int), ``category`` (string),
``session_id`` (string), ``context`` (flat object of string keys to str/int/float/bool).
Unknown fields are rejected so that typos surface instead of being dropped. Strings must be
printable (no control characters).

Validation is pure (no I/O) and raises :class:`streaming.errors.InvalidEvent` with a stable code.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from streaming.errors import InvalidEvent

EVENT_TYPES: tuple[str, ...] = ("view", "click", "purchase")
REQUIRED_FIELDS: tuple[str, ...] = ("event_id", "user_id", "item_id", "event_type", "ts")
OPTIONAL_FIELDS: tuple[str, ...] = ("price", "qty", "category", "session_id", "context")
ALL_FIELDS = frozenset(REQUIRED_FIELDS + OPTIONAL_FIELDS)

# Stable reason codes (DLQ header ``streamrec.reason`` and metric label).
R_TOO_LARGE = "too_large"
R_NOT_JSON = "not_json"
R_NOT_OBJECT = "not_object"
R_MISSING = "missing_field"
R_UNKNOWN_FIELD = "unknown_field"
R_WRONG_TYPE = "wrong_type"
R_EMPTY = "empty_value"
R_TOO_LONG = "too_long"
R_EVENT_TYPE = "unknown_event_type"
R_TS_RANGE = "ts_out_of_range"
R_BAD_NUMBER = "bad_number"
R_BAD_CONTEXT = "bad_context"
R_KEY_MISMATCH = "key_mismatch"
R_CONTROL_CHARS = "control_characters"
R_DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True)
class Limits:
    """Size and range limits. Units: bytes for sizes, characters for strings, ms for times."""

    max_payload_bytes: int = 4096
    max_id_chars: int = 128
    max_string_chars: int = 256
    max_context_keys: int = 16
    min_ts_ms: int = 946_684_800_000  # 2000-01-01T00:00:00Z
    max_future_ms: int = 24 * 3600 * 1000  # clock skew tolerated ahead of the validator's clock
    max_qty: int = 1_000_000
    max_price: float = 1e9


DEFAULT_LIMITS = Limits()
ContextValue = str | int | float | bool


@dataclass(frozen=True, slots=True)
class Event:
    """One user event, as apps send it (see the module docstring for the rules).

    ``ts`` is event time in epoch milliseconds; ``price``, ``qty``, ``category``,
    ``session_id`` and ``context`` are optional. Build one directly, or with :func:`parse_event`
    from a message (which validates it).
    """

    event_id: str
    user_id: str
    item_id: str
    event_type: str
    ts: int
    price: float | None = None
    qty: int | None = None
    category: str | None = None
    session_id: str | None = None
    context: Mapping[str, ContextValue] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of the contract (optional fields only when set)."""
        out: dict[str, Any] = {
            "event_id": self.event_id,
            "user_id": self.user_id,
            "item_id": self.item_id,
            "event_type": self.event_type,
            "ts": self.ts,
        }
        for name in OPTIONAL_FIELDS:
            value = getattr(self, name)
            if value is not None:
                out[name] = dict(value) if name == "context" else value
        return out

    def to_json(self) -> bytes:
        """The Kafka message value."""
        return orjson.dumps(self.to_dict())

    @property
    def key(self) -> bytes:
        """Kafka message key: partitions by user so per-user state lives on one worker."""
        return self.user_id.encode()


def parse_event(
    raw: bytes,
    *,
    key: bytes | None = None,
    limits: Limits = DEFAULT_LIMITS,
    now_ms: int | None = None,
) -> Event:
    """Parse and validate one Kafka message value.

    ``key``, when given, must equal the ``user_id`` (a producer that keys by something else
    would break per-user partitioning). Raises :class:`InvalidEvent`.
    """
    if len(raw) > limits.max_payload_bytes:
        raise InvalidEvent(R_TOO_LARGE, f"{len(raw)} bytes > limit {limits.max_payload_bytes}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        # orjson rejects invalid UTF-8, NaN/Infinity literals and nesting deeper than 1024.
        raise InvalidEvent(R_NOT_JSON, str(exc)) from None
    event = validate_event(obj, limits=limits, now_ms=now_ms)
    if key is not None and key != event.key:
        raise InvalidEvent(
            R_KEY_MISMATCH, f"message key {key[:64]!r} != user_id {event.user_id[:64]!r}"
        )
    return event


def validate_event(
    obj: Any, *, limits: Limits = DEFAULT_LIMITS, now_ms: int | None = None
) -> Event:
    """Validate an already-decoded JSON value. Raises :class:`InvalidEvent`."""
    if not isinstance(obj, dict):
        raise InvalidEvent(R_NOT_OBJECT, f"expected a JSON object, got {_json_type(obj)}")
    missing = [name for name in REQUIRED_FIELDS if name not in obj]
    if missing:
        raise InvalidEvent(R_MISSING, f"missing required field(s): {', '.join(missing)}")
    if len(obj) > len(REQUIRED_FIELDS):
        unknown = sorted(str(k)[:64] for k in obj if k not in ALL_FIELDS)
        if unknown:
            raise InvalidEvent(R_UNKNOWN_FIELD, f"unknown field(s): {', '.join(unknown[:5])}")

    event_id = _string(obj, "event_id", limits.max_id_chars)
    user_id = _string(obj, "user_id", limits.max_id_chars)
    item_id = _string(obj, "item_id", limits.max_id_chars)
    event_type = obj["event_type"]
    if event_type not in EVENT_TYPES:
        shown = event_type[:32] if isinstance(event_type, str) else _json_type(event_type)
        raise InvalidEvent(R_EVENT_TYPE, f"event_type {shown!r} not in {list(EVENT_TYPES)}")
    ts = obj["ts"]
    if type(ts) is not int:
        raise InvalidEvent(R_WRONG_TYPE, f"ts must be an integer (epoch ms), got {_json_type(ts)}")
    now = int(time.time() * 1000) if now_ms is None else now_ms
    if ts < limits.min_ts_ms or ts > now + limits.max_future_ms:
        raise InvalidEvent(
            R_TS_RANGE,
            f"ts {ts} outside [{limits.min_ts_ms}, now + {limits.max_future_ms} ms] "
            "(epoch milliseconds expected)",
        )

    price = obj.get("price")
    if price is not None:
        if type(price) not in (int, float):
            raise InvalidEvent(R_WRONG_TYPE, f"price must be a number, got {_json_type(price)}")
        price = float(price)
        if not math.isfinite(price) or price < 0 or price > limits.max_price:
            raise InvalidEvent(R_BAD_NUMBER, f"price {price!r} outside [0, {limits.max_price}]")
    qty = obj.get("qty")
    if qty is not None:
        if type(qty) is not int:
            raise InvalidEvent(R_WRONG_TYPE, f"qty must be an integer, got {_json_type(qty)}")
        if abs(qty) > limits.max_qty:
            raise InvalidEvent(R_BAD_NUMBER, f"|qty| {abs(qty)} > {limits.max_qty}")
    category = _optional_string(obj, "category", limits.max_string_chars)
    session_id = _optional_string(obj, "session_id", limits.max_id_chars)
    context = obj.get("context")
    if context is not None:
        context = _context(context, limits)

    return Event(
        event_id=event_id,
        user_id=user_id,
        item_id=item_id,
        event_type=event_type,
        ts=ts,
        price=price,
        qty=qty,
        category=category,
        session_id=session_id,
        context=context,
    )


def _string(obj: dict[str, Any], name: str, max_chars: int) -> str:
    value = obj[name]
    if not isinstance(value, str):
        raise InvalidEvent(R_WRONG_TYPE, f"{name} must be a string, got {_json_type(value)}")
    if not value:
        raise InvalidEvent(R_EMPTY, f"{name} must not be empty")
    if len(value) > max_chars:
        raise InvalidEvent(R_TOO_LONG, f"{name} has {len(value)} chars > {max_chars}")
    if not value.isprintable():
        # Ids become Redis key parts and \x1f-separated fields: no control characters.
        raise InvalidEvent(R_CONTROL_CHARS, f"{name} contains control or non-printable characters")
    return value


def _optional_string(obj: dict[str, Any], name: str, max_chars: int) -> str | None:
    if obj.get(name) is None:
        return None
    return _string(obj, name, max_chars)


def _context(value: Any, limits: Limits) -> dict[str, ContextValue]:
    if not isinstance(value, dict):
        raise InvalidEvent(R_BAD_CONTEXT, f"context must be an object, got {_json_type(value)}")
    if len(value) > limits.max_context_keys:
        raise InvalidEvent(R_BAD_CONTEXT, f"context has {len(value)} keys > {limits.max_context_keys}")
    for k, v in value.items():
        if len(k) > limits.max_string_chars:
            raise InvalidEvent(R_BAD_CONTEXT, f"context key of {len(k)} chars is too long")
        if isinstance(v, str):
            if len(v) > limits.max_string_chars:
                raise InvalidEvent(R_BAD_CONTEXT, f"context[{k[:32]!r}] is too long")
        elif isinstance(v, float):
            if not math.isfinite(v):
                raise InvalidEvent(R_BAD_CONTEXT, f"context[{k[:32]!r}] is not finite")
        elif not isinstance(v, int):  # bool is an int
            raise InvalidEvent(
                R_BAD_CONTEXT,
                f"context[{k[:32]!r}] must be str/int/float/bool (flat), got {_json_type(v)}",
            )
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
