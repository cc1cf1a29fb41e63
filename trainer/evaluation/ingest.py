"""Feeding a window of events to the stream processor and getting back its examples.

Two drivers with one interface (:class:`Ingest`):

- :class:`InProcessIngest` calls the ingest agent's :class:`~streaming.ingest.processor.BatchProcessor`
  directly, on one partition, with the real Redis state store: the same code as the agent
  without the broker hop (fast, and what ``streamrec eval`` uses by default);
- :class:`KafkaIngest` produces the events to the events topic, lets a real ``streamrec worker``
  process (the Faust agent) handle them, and reads the examples back from the examples topic.

Both return the examples that became due, sorted by ``(ts, example_id)`` so that runs repeat.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from streaming.contract.events import Event
from streaming.contract.examples import decode_example
from streaming.errors import StreamrecError
from streaming.ingest.processor import RawMessage, build_processor
from streaming.ingest.state_store import read_stats
from streaming.ingest.types import OutMessage
from streaming.io.producer import EventProducer
from streaming.io.redis_client import connect
from streaming.ops import health
from streaming.ops.process import component_process
from streaming.settings import Settings
from trainer.source import ExampleSource


class Ingest(Protocol):
    """A driver of the stream processor: ``mode`` names it in results, ``dead_lettered`` counts
    the events dead-lettered (invalid) so far."""

    mode: str
    dead_lettered: int

    def feed(self, events: Sequence[Event]) -> list[dict[str, Any]]:
        """Process ``events``; returns the decoded examples that became due, sorted by
        ``(ts, example_id)``."""
        ...

    def close(self) -> None:
        """Release what the driver holds (event loop, worker process, clients)."""
        ...


def _sorted(examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(examples, key=lambda ex: (ex["ts"], ex["example_id"]))


class _CollectSink:
    """:class:`~streaming.ingest.types.OutboxSink` that keeps the records (nothing to acknowledge)."""

    def __init__(self) -> None:
        self.messages: list[OutMessage] = []

    async def send_all(self, messages: Sequence[OutMessage]) -> None:
        self.messages.extend(messages)


class InProcessIngest:
    """The ingest agent's processor called directly (partition 0, real Redis state store)."""

    mode = "in-process"

    def __init__(self, settings: Settings) -> None:
        self._loop = asyncio.new_event_loop()
        self._sink = _CollectSink()
        self._processor, self._close = build_processor(settings, sink=self._sink)
        self._cfg = self._processor.cfg
        self._offset = 0
        self.dead_lettered = 0

    def feed(self, events: Sequence[Event]) -> list[dict[str, Any]]:
        """See :meth:`Ingest.feed`; events are processed in chunks of 1000."""
        msgs = []
        for e in events:
            msgs.append(RawMessage(self._offset, e.key, e.to_json()))
            self._offset += 1
        for start in range(0, len(msgs), 1000):
            self._loop.run_until_complete(self._processor.process(0, msgs[start:start + 1000]))
        out, self._sink.messages = self._sink.messages, []
        self.dead_lettered += sum(m.topic == self._cfg.dlq_topic for m in out)
        return _sorted([decode_example(m.value) for m in out if m.topic == self._cfg.examples_topic])

    def close(self) -> None:
        """Close the processor's resources, then the event loop."""
        self._loop.run_until_complete(self._close())
        self._loop.close()


class KafkaIngest:
    """Events through the broker and a real ingest worker. ``feed`` waits (up to ``timeout_s``)
    until the worker has processed every event sent so far and the examples it reported have
    arrived on the examples topic."""

    mode = "kafka"

    def __init__(self, settings: Settings, run_dir: Path, timeout_s: float = 120.0) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self.worker = component_process(settings, run_dir, "eval-worker", "worker")
        self._redis = connect(settings.redis)
        self._producer = EventProducer(settings)
        self._examples = ExampleSource(settings, range(settings.topics.examples_partitions))
        self._sent = 0
        self._received = 0
        self.dead_lettered = 0
        self.worker.start()
        deadline = time.monotonic() + timeout_s
        while "ingest" not in health.consuming(health.parse(self._redis.hgetall(
                health.key(settings.redis.key_prefix))), int(time.time() * 1000)):
            self.worker.check_alive()
            if time.monotonic() > deadline:
                raise StreamrecError(f"ingest worker not consuming after {timeout_s:g} s; "
                                     f"log: {run_dir / 'eval-worker.log'}")
            time.sleep(0.2)

    def _stats(self) -> dict[str, int]:
        return read_stats(self._redis, self.settings.redis.key_prefix,
                          range(self.settings.topics.events_partitions))

    def feed(self, events: Sequence[Event]) -> list[dict[str, Any]]:
        """See :meth:`Ingest.feed`. Raises :class:`StreamrecError` if the worker stalls past
        ``timeout_s`` (s) or dies."""
        for e in events:
            self._producer.send(e)
        self._producer.flush(60)
        self._sent += len(events)
        deadline = time.monotonic() + self.timeout_s
        while (st := self._stats()).get("processed", 0) < self._sent:
            self._wait(deadline, f"processed {st.get('processed', 0)} of {self._sent} events")
        want = st.get("examples", 0) - self._received
        self.dead_lettered = st.get("invalid", 0)
        out: list[dict[str, Any]] = []
        while len(out) < want:
            out.extend(ex.to_doc() for _, _, ex in self._examples.poll(want - len(out), 0.2))
            self._wait(deadline, f"received {len(out)} of {want} examples")
        self._received += len(out)
        return _sorted(out)

    def _wait(self, deadline: float, what: str) -> None:
        self.worker.check_alive()
        if time.monotonic() > deadline:
            raise StreamrecError(f"eval through Kafka stalled: {what}")
        time.sleep(0.01)

    def close(self) -> None:
        """Stop the worker, close the examples consumer, flush the producer (10 s), close Redis."""
        self.worker.stop()
        self._examples.close()
        self._producer.flush(10)
        self._redis.close()
