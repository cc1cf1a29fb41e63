"""Ingest agent: events -> validation, dedup, feature state, labelled examples, DLQ.

Takes batches of up to ``batch_size`` events (or what arrived within ``batch_wait_s``), splits
them by partition and hands each run to :class:`streaming.ingest.processor.BatchProcessor`.
Offsets are committed by Faust after the agent moved past them; effects are exactly-once anyway,
through the applied-offset watermark in Redis.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any

import faust
import redis

from streaming.errors import BrokerError, StoreError
from streaming.ingest.processor import BatchProcessor, RawMessage, build_processor
from streaming.ingest.topics import Topics
from streaming.ops import health
from streaming.ops.metrics import IngestMetrics
from streaming.settings import Settings

log = logging.getLogger(__name__)


class _Resources:
    """The processor and its clients, shared by the agent and the outbox timer; created in the
    worker's event loop on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.processor: BatchProcessor | None = None
        self._close: Any = None

    def get(self) -> BatchProcessor:
        if self.processor is None:
            self.processor, self._close = build_processor(self.settings)
        return self.processor

    async def close(self) -> None:
        if self._close is not None:
            await self._close()
            self.processor = self._close = None


async def _process_until_stored(processor: BatchProcessor, runs: dict[int, list[RawMessage]],
                                metrics: IngestMetrics, max_backoff_s: float = 5.0) -> list[Any]:
    """Process the batch, retrying with exponential backoff while Redis is unavailable.

    Retrying is safe: a partition whose batch was applied before the failure sees its offset
    watermark and skips it. Crashing the agent instead would restart the worker into the same
    outage (a crash loop) and risks Faust acknowledging the batch it never stored."""
    delay = 0.1
    while True:
        try:
            return list(await asyncio.gather(
                *(processor.process(p, msgs) for p, msgs in runs.items())))
        except StoreError as exc:
            metrics.redis_errors.labels("ingest").inc()
            log.warning("Redis unavailable (%s); retrying the batch in %.1f s", exc, delay)
        except BrokerError as exc:
            # The batch's state is committed and its records wait in the outbox: the retry finds
            # the watermark moved and the outbox timer produces them once Kafka answers.
            metrics.kafka_errors.labels("ingest").inc()
            log.warning("outbox not produced (%s); retrying in %.1f s", exc, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_backoff_s)


def register_ingest(app: faust.App, settings: Settings, topics: Topics,
                    metrics: IngestMetrics) -> None:
    """Register the ingest agent on ``app``: batches of up to ``stream.batch_size`` events (or what
    arrived within ``stream.batch_wait_ms``) processed per partition, plus a 1 s timer that flushes
    the assigned partitions' outboxes and writes the worker's heartbeat."""
    batch_size = settings.stream.batch_size
    batch_wait_s = settings.stream.batch_wait_ms / 1000
    resources = _Resources(settings)
    beat = health.beat_field("ingest")

    @app.timer(interval=1.0)
    async def flush_outboxes() -> None:
        # A worker that committed a batch and died before producing its examples left them in
        # the outbox; the partition's next owner produces them even if no new event arrives.
        assigned = app.consumer.assignment() if app.consumer else set()
        mine = [tp.partition for tp in assigned if tp.topic == settings.topics.events]
        processor = resources.get()
        try:
            for partition in mine:
                metrics.record_delivery(await processor.flush_outbox(partition))
        except StoreError as exc:  # Redis away: the next tick tries again
            metrics.redis_errors.labels("ingest").inc()
            log.warning("outbox not flushed: %s", exc)
        except BrokerError as exc:  # Kafka away: the next tick tries again
            metrics.kafka_errors.labels("ingest").inc()
            log.warning("outbox not flushed: %s", exc)
        # The same timer is the worker's heartbeat (streaming.ops.health).
        try:
            await processor.store.r.hset(health.key(settings.redis.key_prefix), beat,
                                         health.beat_value("ingest", len(mine)))
        except redis.RedisError as exc:
            metrics.redis_errors.labels("ingest").inc()
            log.warning("heartbeat not written: %s", exc)

    @app.agent(topics.events, name="ingest", concurrency=1)
    async def ingest(stream: faust.StreamT) -> None:
        processor = resources.get()
        try:
            async for batch in stream.take_events(batch_size, within=batch_wait_s):
                runs: dict[int, list[RawMessage]] = {}
                for event in batch:
                    m = event.message
                    ts_ms = int(m.timestamp * 1000) if m.timestamp else None
                    runs.setdefault(m.partition, []).append(
                        RawMessage(m.offset, m.key, m.value, ts_ms))
                # Partitions are independent: while Redis runs one partition's script, Python
                # plans another's batch.
                results = await _process_until_stored(processor, runs, metrics)
                now = time.time()
                counts: Counter[str] = Counter()
                for result in results:
                    counts.update(result.counts)
                # Message timestamps (producer create time), not event times: a replay of old
                # events would otherwise read as hours of latency.
                metrics.record_delivery(counts)
                metrics.record_batch(counts, [now - t / 1000 for msgs in runs.values()
                                              for m in msgs if (t := m.timestamp_ms)])
        finally:
            await resources.close()
