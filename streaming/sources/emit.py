"""Sending a stream of records to Kafka at a given rate, validating each against the contract.

Invalid records are never sent silently and never crash the run: each is reported with where it
came from and why (``events.jsonl:3: missing_field: missing required field(s): ts``), counted, and
optionally forwarded raw (``send_invalid=True``) so the ingest agent's DLQ path can be exercised.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from streaming.contract.events import Event, validate_event
from streaming.errors import InvalidEvent
from streaming.sources.files import BadRecord


class EventSink(Protocol):
    """Where emitted records go; :class:`streaming.io.producer.EventProducer` is the real one."""

    def send(self, event: Event) -> None:
        """Send one valid event."""
        ...

    def send_raw(self, key: bytes | None, value: bytes) -> None:
        """Send bytes as they are (an invalid record forwarded for the DLQ)."""
        ...


class Pacer:
    """Spaces calls to ``wait`` at ``rate`` per second (None = as fast as possible).

    Schedules against a fixed start so that rounding and slow iterations do not accumulate drift.
    """

    def __init__(self, rate: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = 1.0 / rate if rate else 0.0
        self._clock = clock
        self._start = clock()
        self._n = 0

    def delay(self) -> float:
        """Seconds to wait before the next item (0 when behind schedule)."""
        if not self._interval:
            return 0.0
        due = self._start + self._n * self._interval
        return max(0.0, due - self._clock())

    def wait(self, stop: threading.Event | None = None) -> None:
        """Sleep until the next item is due (or ``stop`` is set), then count it."""
        d = self.delay()
        if d > 0:
            if stop is not None:
                stop.wait(d)
            else:
                time.sleep(d)
        self._n += 1


@dataclass(slots=True)
class EmitReport:
    """What :func:`emit_records` did: counts, the first problems found, elapsed time (s)."""

    emitted: int = 0
    invalid: int = 0
    forwarded_invalid: int = 0
    messages: list[str] = field(default_factory=list)  # first problems, for the user
    elapsed_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """The counts, elapsed time (s) and achieved rate (events/s), JSON-ready."""
        return {
            "emitted": self.emitted,
            "invalid": self.invalid,
            "forwarded_invalid": self.forwarded_invalid,
            "elapsed_s": round(self.elapsed_s, 3),
            "rate_per_s": round(self.emitted / self.elapsed_s, 1) if self.elapsed_s else 0.0,
        }


def emit_records(
    producer: EventSink,
    records: Iterable[tuple[str, dict[str, Any] | BadRecord | Event]],
    *,
    rate: float | None = None,
    limit: int | None = None,
    send_invalid: bool = False,
    stop: threading.Event | None = None,
    on_invalid: Callable[[str], None] | None = None,
    max_messages: int = 20,
) -> EmitReport:
    """Validate and send ``records``; returns counts. Stops at ``limit`` or when ``stop`` is set."""
    report = EmitReport()
    pacer = Pacer(rate)
    started = time.monotonic()
    for origin, record in records:
        if stop is not None and stop.is_set():
            break
        if limit is not None and report.emitted + report.forwarded_invalid >= limit:
            break
        pacer.wait(stop)
        if isinstance(record, Event):
            producer.send(record)
            report.emitted += 1
            continue
        try:
            if isinstance(record, BadRecord):
                raise InvalidEvent(record.code, record.detail)
            event = validate_event(record)
        except InvalidEvent as exc:
            report.invalid += 1
            message = f"{origin}: {exc.code}: {exc.detail}"
            if len(report.messages) < max_messages:
                report.messages.append(message)
            if on_invalid is not None:
                on_invalid(message)
            if send_invalid:
                raw = record.raw if isinstance(record, BadRecord) else orjson.dumps(record)
                key = record.get("user_id") if isinstance(record, dict) else None
                producer.send_raw(key.encode() if isinstance(key, str) else None, raw)
                report.forwarded_invalid += 1
            continue
        producer.send(event)
        report.emitted += 1
    report.elapsed_s = time.monotonic() - started
    return report
