"""Reading consumer lag from Kafka (the adapter around :mod:`streaming.ops.lag`).

Committed offsets come from one consumer per monitored group (``Consumer.committed``: it never
subscribes, so it never joins or disturbs the group), log-end and log-start offsets from the
watermarks, and the age of the oldest unconsumed message from one peek consumer that reads the
message at each lagging partition's committed offset (``kafka_consumergroup_lag_seconds``).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import confluent_kafka

from streaming.contract.names import GROUP_INGEST, GROUP_LAG_MONITOR, GROUP_SCORER, GROUP_TRAINER
from streaming.errors import BrokerError
from streaming.io.kafka import client_config
from streaming.ops.lag import PartitionLag, StatusEvaluator, partition_lag
from streaming.ops.metrics import STATUS_CODES, LagMetrics
from streaming.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WatchedGroup:
    """A consumer group to watch and the topic it consumes."""

    group: str
    topic: str
    role: str  # what the group does, for people reading `streamrec lag`


def default_groups(settings: Settings) -> list[WatchedGroup]:
    """The pipeline's groups: ingest and scorer on the events topic, trainer on the examples."""
    t = settings.topics
    return [
        WatchedGroup(GROUP_INGEST, t.events, "ingest: validation, features, labels"),
        WatchedGroup(GROUP_SCORER, t.events, "scorer: event-triggered feed refresh"),
        WatchedGroup(GROUP_TRAINER, t.examples, "trainer: committed at each checkpoint"),
    ]


class LagCollector:
    """Reads lag of ``groups`` (default :func:`default_groups`) from Kafka without joining them:
    one consumer per group plus a peek consumer, created at once; :meth:`close` them."""

    def __init__(self, settings: Settings, groups: list[WatchedGroup] | None = None,
                 timeout_s: float = 10.0) -> None:
        self.settings = settings
        self.groups = groups or default_groups(settings)
        self.timeout_s = timeout_s
        self._consumers = {g.group: self._consumer(g.group) for g in self.groups}
        self._peek = self._consumer(GROUP_LAG_MONITOR)
        self._partitions: dict[str, list[int]] = {}

    def _consumer(self, group: str) -> confluent_kafka.Consumer:
        return confluent_kafka.Consumer(client_config(self.settings.kafka, **{
            "group.id": group, "enable.auto.commit": False, "enable.partition.eof": False}))

    def _topic_partitions(self, topic: str) -> list[int]:
        if topic not in self._partitions:
            md = self._peek.list_topics(topic, timeout=self.timeout_s)
            meta = md.topics.get(topic)
            if meta is None or meta.error is not None:
                raise BrokerError(f"topic {topic!r} not found: {meta.error if meta else ''}")
            self._partitions[topic] = sorted(meta.partitions)
        return self._partitions[topic]

    def _oldest_ts_ms(self, topic: str, partition: int, offset: int) -> int | None:
        self._peek.assign([confluent_kafka.TopicPartition(topic, partition, offset)])
        try:
            for msg in self._peek.consume(1, min(2.0, self.timeout_s)):
                if msg.error() is None:
                    kind, ts = msg.timestamp()
                    return ts if kind != confluent_kafka.TIMESTAMP_NOT_AVAILABLE else None
            return None
        finally:
            self._peek.unassign()

    def collect(self, ages: bool = True) -> list[PartitionLag]:
        """One lag sample of every partition of every watched group. Raises :class:`BrokerError`.

        ``ages=False`` skips reading each lagging partition's oldest unconsumed message (its
        ``seconds`` stay 0): a count of messages is then a few metadata requests, where the
        ages cost a fetch per lagging partition (seconds on a busy broker)."""
        now_ms = int(time.time() * 1000)
        out = []
        try:
            for g in self.groups:
                parts = self._topic_partitions(g.topic)
                consumer = self._consumers[g.group]
                committed = consumer.committed(
                    [confluent_kafka.TopicPartition(g.topic, p) for p in parts],
                    timeout=self.timeout_s)
                for tp in committed:
                    low, high = consumer.get_watermark_offsets(
                        confluent_kafka.TopicPartition(g.topic, tp.partition),
                        timeout=self.timeout_s)
                    start = tp.offset if tp.offset >= 0 else low
                    oldest = self._oldest_ts_ms(g.topic, tp.partition, start) \
                        if ages and high > start else None
                    out.append(partition_lag(g.group, g.topic, tp.partition, high, tp.offset,
                                             oldest, now_ms, log_start=low))
        except confluent_kafka.KafkaException as exc:
            raise BrokerError(f"lag read failed: {exc}") from None
        return out

    def close(self) -> None:
        """Close the consumers."""
        for consumer in self._consumers.values():
            consumer.close()
        self._peek.close()


@dataclass(frozen=True, slots=True)
class LagSnapshot:
    """One :meth:`LagMonitor.sample`: when (wall ms), every partition's lag, each group's status."""

    at_ms: int
    partitions: list[PartitionLag]
    status: dict[str, str]  # group -> OK / WARNING / STALLED / STOPPED

    def by_group(self) -> dict[str, dict[str, Any]]:
        """Per group: total lag, the oldest unconsumed message (s), flagged partitions, status."""
        out = {}
        for group in sorted({p.group for p in self.partitions}):
            mine = [p for p in self.partitions if p.group == group]
            out[group] = {"lag": sum(p.lag for p in mine),
                          "lag_seconds": max(p.lag_seconds for p in mine),
                          "anomalies": sum(1 for p in mine if p.anomaly),
                          "status": self.status.get(group, "OK")}
        return out

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form: :meth:`by_group` and every partition."""
        return {"at_ms": self.at_ms, "groups": self.by_group(),
                "partitions": [p.as_dict() for p in self.partitions]}


class LagMonitor:
    """Samples lag every ``interval_s``, rates groups, and updates :class:`LagMetrics`."""

    def __init__(self, settings: Settings, interval_s: float = 5.0,
                 evaluator: StatusEvaluator | None = None) -> None:
        self.settings = settings
        self.interval_s = interval_s
        self.evaluator = evaluator or StatusEvaluator()
        self.metrics = LagMetrics()
        self.latest: LagSnapshot | None = None
        self._collector: LagCollector | None = None
        self._lock = threading.Lock()

    def sample(self) -> LagSnapshot:
        """Collect lag (connecting on first use), rate the groups, update the metrics and keep
        the result as ``latest``. Raises :class:`BrokerError`."""
        with self._lock:
            if self._collector is None:
                self._collector = LagCollector(self.settings)
            lags = self._collector.collect()
            now = time.monotonic()
            self.evaluator.add(lags, now)
            status = {g: self.evaluator.group_status(g, now) for g in {p.group for p in lags}}
            snap = LagSnapshot(int(time.time() * 1000), lags, status)
            self._export(snap)
            self.latest = snap
            return snap

    def _export(self, snap: LagSnapshot) -> None:
        m = self.metrics
        for p in snap.partitions:
            labels = (p.group, p.topic, str(p.partition))
            m.lag.labels(*labels).set(p.lag)
            m.lag_seconds.labels(*labels).set(p.lag_seconds)
            m.current.labels(*labels).set(p.committed)
            m.anomaly.labels(*labels).set(1 if p.anomaly else 0)
            m.log_end.labels(p.topic, str(p.partition)).set(p.log_end)
        for group, status in snap.status.items():
            m.status.labels(group).set(STATUS_CODES[status])

    def run(self, stop: threading.Event) -> None:
        """:meth:`sample` every ``interval_s`` (s) until ``stop`` is set; broker errors are logged
        and the next sample is tried."""
        while not stop.is_set():
            try:
                self.sample()
            except BrokerError as exc:
                log.warning("%s", exc)
            stop.wait(self.interval_s)

    def close(self) -> None:
        """Close the collector's consumers (a later :meth:`sample` opens new ones)."""
        with self._lock:
            if self._collector is not None:
                self._collector.close()
                self._collector = None
