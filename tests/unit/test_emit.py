from __future__ import annotations

import orjson

from streaming.contract.events import Event
from streaming.sources.emit import Pacer, emit_records
from streaming.sources.files import BadRecord

NOW = 1_732_000_000_000


class RecordingSink:
    """Collects what would be sent; the real producer is covered by integration tests."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.raw: list[tuple[bytes | None, bytes]] = []

    def send(self, event: Event) -> None:
        self.events.append(event)

    def send_raw(self, key: bytes | None, value: bytes) -> None:
        self.raw.append((key, value))


def valid(n: int) -> dict[str, object]:
    return {"event_id": f"e{n}", "user_id": "u", "item_id": "i", "event_type": "view", "ts": NOW}


def test_invalid_records_are_reported_with_origin_and_not_sent() -> None:
    sink = RecordingSink()
    seen: list[str] = []
    records = [("f:1", valid(1)), ("f:2", {"user_id": "u"}), ("f:3", BadRecord("not_json", "x", b"{"))]
    report = emit_records(sink, records, on_invalid=seen.append)
    assert (report.emitted, report.invalid) == (1, 2)
    assert seen[0].startswith("f:2: missing_field") and seen[1].startswith("f:3: not_json")
    assert [e.event_id for e in sink.events] == ["e1"] and not sink.raw


def test_send_invalid_forwards_the_original_bytes() -> None:
    sink = RecordingSink()
    records = [("f:1", {"user_id": "u7", "ts": "x"}), ("f:2", BadRecord("not_json", "x", b"{oops"))]
    report = emit_records(sink, records, send_invalid=True)
    assert report.forwarded_invalid == 2
    assert sink.raw[0] == (b"u7", orjson.dumps({"user_id": "u7", "ts": "x"}))
    assert sink.raw[1] == (None, b"{oops")


def test_limit_counts_sent_messages() -> None:
    sink = RecordingSink()
    report = emit_records(sink, ((f"f:{n}", valid(n)) for n in range(100)), limit=10)
    assert report.emitted == 10 and len(sink.events) == 10


def test_pacer_schedules_against_a_fixed_start() -> None:
    now = [100.0]
    pacer = Pacer(10.0, clock=lambda: now[0])
    assert pacer.delay() == 0.0
    pacer._n = 5  # five items already released
    assert abs(pacer.delay() - 0.5) < 1e-9
    now[0] = 101.0  # behind schedule: no waiting, no catch-up burst beyond the schedule
    assert pacer.delay() == 0.0
    assert Pacer(None).delay() == 0.0
