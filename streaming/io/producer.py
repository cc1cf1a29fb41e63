"""Kafka producers: idempotent, acknowledged, and bounded.

:class:`EventProducer` is what apps use to send :class:`~streaming.contract.events.Event` s;
:class:`RecordProducer` (its base) sends raw records and is what streamrec's own components use
for the DLQ, training examples and model updates.

Neither buffers without limit: when librdkafka's local queue is full, ``send``
serves delivery reports until space frees up, and gives up with
:class:`~streaming.errors.BackpressureTimeout` after ``block_timeout_s``. Every message ends up
either acknowledged by the broker or counted (and kept, up to a bound) as failed; ``flush``
raises :class:`~streaming.errors.DeliveryError` if any failed.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import confluent_kafka

from streaming.contract.events import Event
from streaming.errors import BackpressureTimeout, BrokerError, DeliveryError, RecordRefused
from streaming.io.kafka import client_config
from streaming.settings import Settings

log = logging.getLogger(__name__)

# Errors that no retry can fix: the record itself is refused (too large for the broker or the
# topic, or invalid for it). Anything else (timeouts, leader changes) may succeed later.
PERMANENT_ERRORS = frozenset({
    confluent_kafka.KafkaError.MSG_SIZE_TOO_LARGE,
    confluent_kafka.KafkaError.RECORD_LIST_TOO_LARGE,
    confluent_kafka.KafkaError.INVALID_RECORD,
    confluent_kafka.KafkaError.INVALID_MSG_SIZE,
    confluent_kafka.KafkaError.INVALID_MSG,
})

Record = tuple[str, bytes | None, bytes, Sequence[tuple[str, bytes]]]  # topic, key, value, headers


@dataclass(slots=True)
class DeliveryStats:
    """Counts of a producer's messages: queued, acknowledged, failed (with the last errors), and
    refused for good and handed back to the caller (:meth:`RecordProducer.deliver`)."""

    sent: int = 0
    delivered: int = 0
    failed: int = 0
    refused: int = 0
    last_errors: deque[str] = field(default_factory=lambda: deque(maxlen=20))

    @property
    def in_flight(self) -> int:
        """Queued and not yet acknowledged or failed."""
        return self.sent - self.delivered - self.failed - self.refused


class RecordProducer:
    """Sends raw records (key, value bytes, headers) to a topic (``topic``, default the events
    topic; each send may name another).

    Parameters
    ----------
    max_queued_messages:
        librdkafka's local queue bound (messages); beyond it ``send`` blocks.
    block_timeout_s:
        how long ``send`` may block on a full queue before raising (s).
    linger_ms:
        batching delay (ms); small keeps event-to-feed latency low.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        topic: str | None = None,
        max_queued_messages: int = 100_000,
        block_timeout_s: float = 30.0,
        linger_ms: int = 5,
        extra_config: dict[str, Any] | None = None,
    ) -> None:
        self.topic = topic or settings.topics.events
        self.stats = DeliveryStats()
        self._block_timeout_s = block_timeout_s
        conf = client_config(
            settings.kafka,
            **{
                "enable.idempotence": True,  # implies acks=all and safe retries: no dupes, in order
                "acks": "all",
                "linger.ms": linger_ms,
                "compression.type": "lz4",
                "queue.buffering.max.messages": max_queued_messages,
                "message.timeout.ms": 120_000,
                **(extra_config or {}),
            },
        )
        try:
            self._producer = confluent_kafka.Producer(conf)
        except confluent_kafka.KafkaException as exc:
            raise BrokerError(f"cannot create producer: {exc}") from None

    def send_raw(
        self,
        key: bytes | None,
        value: bytes,
        *,
        topic: str | None = None,
        headers: dict[str, bytes] | None = None,
        timestamp_ms: int | None = None,
        on_delivery: Any = None,
    ) -> None:
        """Queue one message; blocks (serving delivery reports) while the queue is full.
        Raises :class:`~streaming.errors.RecordRefused` for a record the client refuses at once
        (above ``message.max.bytes``), :class:`~streaming.errors.BrokerError` otherwise.
        ``on_delivery(err, msg)``, if given, replaces the producer's own delivery accounting
        (:meth:`deliver` uses it and calls that accounting itself)."""
        deadline: float | None = None
        kwargs: dict[str, Any] = {"on_delivery": on_delivery or self._on_delivery}
        if headers:
            kwargs["headers"] = list(headers.items())
        if timestamp_ms is not None:
            kwargs["timestamp"] = timestamp_ms
        while True:
            try:
                self._producer.produce(topic or self.topic, value=value, key=key, **kwargs)
                break
            except BufferError:
                now = time.monotonic()
                deadline = deadline or now + self._block_timeout_s
                if now >= deadline:
                    raise BackpressureTimeout(
                        f"producer queue full for {self._block_timeout_s:.0f} s "
                        f"({self.stats.in_flight} in flight): is the broker reachable?"
                    ) from None
                self._producer.poll(0.05)
            except confluent_kafka.KafkaException as exc:
                err = exc.args[0]
                if err.code() in PERMANENT_ERRORS:
                    raise RecordRefused(f"produce to {topic or self.topic!r} refused "
                                        f"({len(value)} bytes): {err.str()}", err.str()) from None
                raise BrokerError(f"produce to {topic or self.topic!r} failed: {exc}") from None
        self.stats.sent += 1
        self._producer.poll(0)

    def deliver(self, records: Sequence[Record], timeout_s: float = 60.0) -> dict[int, str]:
        """Produce ``records`` and wait until each is acknowledged or refused.

        Returns ``{index: error}`` for the records refused for good (:data:`PERMANENT_ERRORS`,
        whether librdkafka refused them at once or the broker did). Raises
        :class:`~streaming.errors.DeliveryError` if any other failure happened or not all were
        acknowledged within ``timeout_s``: a retry of the same records may then succeed."""
        refused: dict[int, str] = {}
        transient: list[str] = []

        def report(index: int, err: confluent_kafka.KafkaError | None, msg: Any) -> None:
            if err is not None and err.code() in PERMANENT_ERRORS:
                self.stats.refused += 1  # handed back to the caller, not a failure of ours
                refused[index] = err.str()
                return
            self._on_delivery(err, msg)
            if err is not None:
                transient.append(err.str())

        for index, (topic, key, value, headers) in enumerate(records):
            try:
                self.send_raw(key, value, topic=topic, headers=dict(headers) if headers else None,
                              on_delivery=functools.partial(report, index))
            except RecordRefused as exc:
                refused[index] = exc.error
        remaining = self._producer.flush(timeout_s)
        if remaining or transient:
            raise DeliveryError(
                f"{remaining} record(s) unacknowledged after {timeout_s:.0f} s, "
                f"{len(transient)} failed" + (f"; last error: {transient[-1]}" if transient else ""),
                failed=remaining + len(transient))
        return refused

    def poll(self, timeout_s: float = 0.0) -> None:
        """Serve delivery reports."""
        self._producer.poll(timeout_s)

    def flush(self, timeout_s: float = 30.0) -> DeliveryStats:
        """Wait for every queued message to be acknowledged or to fail."""
        remaining = self._producer.flush(timeout_s)
        if remaining:
            raise DeliveryError(
                f"{remaining} message(s) still unacknowledged after {timeout_s:.0f} s",
                failed=remaining,
            )
        if self.stats.failed:
            raise DeliveryError(
                f"{self.stats.failed} message(s) failed; last error: {self.stats.last_errors[-1]}",
                failed=self.stats.failed,
            )
        return self.stats

    def close(self, timeout_s: float = 30.0) -> DeliveryStats:
        """:meth:`flush`: wait for every delivery, raise if any failed."""
        return self.flush(timeout_s)

    def __enter__(self) -> RecordProducer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            # Still try to deliver what was queued, but do not mask the original error.
            self._producer.flush(5.0)

    def _on_delivery(self, err: confluent_kafka.KafkaError | None, msg: Any) -> None:
        if err is None:
            self.stats.delivered += 1
        else:
            self.stats.failed += 1
            self.stats.last_errors.append(err.str())
            log.warning("delivery failed: %s", err.str())


class EventProducer(RecordProducer):
    """Sends :class:`~streaming.contract.events.Event` s to the events topic, keyed by user (so
    all events of a user land on one partition). Use it as a context manager: leaving the block
    waits for every delivery report and raises :class:`~streaming.errors.DeliveryError` if any
    message failed::

        with EventProducer(Settings.load()) as producer:
            producer.send(Event("e-1", "u42", "sku-7", "click", ts=1732345678123))

    Options (keyword-only) are :class:`RecordProducer`'s.
    """

    def send(self, event: Event, *, headers: dict[str, bytes] | None = None) -> None:
        """Queue one event; blocks (serving delivery reports) while the local queue is full and
        raises :class:`~streaming.errors.BackpressureTimeout` after ``block_timeout_s``."""
        self.send_raw(event.key, event.to_json(), headers=headers)

    def __enter__(self) -> EventProducer:
        return self
