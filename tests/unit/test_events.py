from __future__ import annotations

import math

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streaming.contract.events import DEFAULT_LIMITS, Event, Limits, parse_event, validate_event
from streaming.errors import InvalidEvent

NOW = 1_732_000_000_000


def good(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "event_id": "e1", "user_id": "u1", "item_id": "i1", "event_type": "click", "ts": NOW,
    }
    base.update(over)
    return base


def reason(obj: object, **kw: object) -> str:
    with pytest.raises(InvalidEvent) as info:
        validate_event(obj, now_ms=NOW, **kw)  # type: ignore[arg-type]
    return info.value.code


def test_minimal_event_roundtrips_through_json() -> None:
    event = validate_event(good(), now_ms=NOW)
    assert event == Event("e1", "u1", "i1", "click", NOW)
    assert parse_event(event.to_json(), key=b"u1", now_ms=NOW) == event
    assert event.key == b"u1"


def test_full_event_keeps_optional_fields() -> None:
    obj = good(price=19.99, qty=2, category="shoes", session_id="s1",
               context={"device": "ios", "page": 2, "promo": True, "score": 0.5})
    event = validate_event(obj, now_ms=NOW)
    assert event.to_dict() == obj
    assert event.price == 19.99 and event.qty == 2


def test_integer_price_becomes_float_and_null_optionals_are_absent() -> None:
    event = validate_event(good(price=3, category=None), now_ms=NOW)
    assert event.price == 3.0 and isinstance(event.price, float)
    assert "category" not in event.to_dict()


@pytest.mark.parametrize(
    ("obj", "code"),
    [
        ([1, 2], "not_object"),
        ("x", "not_object"),
        ({"user_id": "u"}, "missing_field"),
        (good(extra=1), "unknown_field"),
        (good(user_id=42), "wrong_type"),
        (good(item_id=None), "wrong_type"),
        (good(user_id=""), "empty_value"),
        (good(item_id="x" * 129), "too_long"),
        (good(user_id="a\x1fb"), "control_characters"),
        (good(category="line\nbreak"), "control_characters"),
        (good(event_type="like"), "unknown_event_type"),
        (good(event_type=3), "unknown_event_type"),
        (good(ts="2024-01-01"), "wrong_type"),
        (good(ts=1.5e12), "wrong_type"),
        (good(ts=True), "wrong_type"),
        (good(ts=-5), "ts_out_of_range"),
        (good(ts=1_732_000_000), "ts_out_of_range"),  # seconds, not milliseconds
        (good(ts=NOW + 2 * 86_400_000), "ts_out_of_range"),
        (good(price="9.99"), "wrong_type"),
        (good(price=-1.0), "bad_number"),
        (good(price=1e12), "bad_number"),
        (good(qty=1.5), "wrong_type"),
        (good(qty=10**9), "bad_number"),
        (good(category=["a"]), "wrong_type"),
        (good(context=[1]), "bad_context"),
        (good(context={"nested": {"a": 1}}), "bad_context"),
        (good(context={"list": [1]}), "bad_context"),
        (good(context={f"k{i}": i for i in range(17)}), "bad_context"),
        (good(context={"v": "x" * 300}), "bad_context"),
        (good(context={"v": math.inf}), "bad_context"),
    ],
)
def test_invalid_events_have_precise_reasons(obj: object, code: str) -> None:
    assert reason(obj) == code


def test_missing_fields_are_all_named() -> None:
    with pytest.raises(InvalidEvent) as info:
        validate_event({"event_id": "e"}, now_ms=NOW)
    assert "user_id" in info.value.detail and "ts" in info.value.detail


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{not json", "not_json"),
        (b'{"a": NaN}', "not_json"),
        (b'{"a": Infinity}', "not_json"),
        (b'{"user_id": "\xff\xfe"}', "not_json"),  # invalid UTF-8
        (b"[" * 2000 + b"]" * 2000, "not_json"),  # nesting deeper than the decoder allows
        (b"", "not_json"),
        (b"x" * (DEFAULT_LIMITS.max_payload_bytes + 1), "too_large"),
    ],
)
def test_undecodable_payloads(raw: bytes, code: str) -> None:
    limits = Limits(max_payload_bytes=10_000) if raw.startswith(b"[") else DEFAULT_LIMITS
    with pytest.raises(InvalidEvent) as info:
        parse_event(raw, limits=limits, now_ms=NOW)
    assert info.value.code == code


def test_message_key_must_match_user() -> None:
    raw = orjson.dumps(good())
    with pytest.raises(InvalidEvent) as info:
        parse_event(raw, key=b"someone-else", now_ms=NOW)
    assert info.value.code == "key_mismatch"


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(
    st.sampled_from(["event_id", "user_id", "item_id", "event_type", "ts", "price", "qty",
                     "category", "session_id", "context", "other"]),
    json_values,
))
def test_any_json_object_is_accepted_or_rejected_with_a_reason(obj: dict[str, object]) -> None:
    raw = orjson.dumps(obj)
    try:
        event = parse_event(raw, now_ms=NOW)
    except InvalidEvent as exc:
        assert exc.code and exc.detail
    else:
        assert parse_event(event.to_json(), now_ms=NOW) == event


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_escape_as_other_exceptions(raw: bytes) -> None:
    with pytest.raises(InvalidEvent):
        parse_event(raw, now_ms=NOW)
