"""Reading labelled examples from Kafka for one rank: its own partitions, its own positions.

Positions live in the checkpoint manifest, not in the consumer: a restarted trainer seeks to the
offsets of the checkpoint it resumes from, so nothing is trained twice or skipped. Offsets are
also committed to the consumer group after each durable checkpoint, for lag monitoring.

A manifest's offsets are applied only to the topic instance they were read from: the manifest
records the Kafka cluster id and the examples topic's id (:func:`verified_offsets`). After a
new cluster (a fresh embedded broker) or a topic deleted and created again, the trainer reads
from the group's committed offsets (which Kafka deletes with the topic), else from the beginning.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import confluent_kafka

from streaming.contract.examples import ExampleRow, decode_row
from streaming.contract.names import GROUP_TRAINER
from streaming.errors import BrokerError, InvalidExample
from streaming.io.kafka import ClusterIdentity, client_config, committed_offsets
from streaming.settings import Settings

log = logging.getLogger(__name__)


def offset_key(topic: str, partition: int) -> str:
    """``"topic:partition"``, the key of a partition in a manifest's ``offsets``."""
    return f"{topic}:{partition}"


def verified_offsets(saved: dict[str, int], saved_cluster_id: str, saved_topic_ids: dict[str, str],
                     current: ClusterIdentity | None, topic: str) -> tuple[dict[str, int], str]:
    """The offsets of ``topic`` in ``saved`` (a manifest's ``offsets``) that may be applied to
    the cluster the trainer now reads, and why none may when they may not.

    They may when the manifest's cluster id and the id it recorded for ``topic`` equal the
    current ones. Otherwise (another cluster, the topic created again, a manifest that recorded
    no identity, or a cluster that could not be asked) the result is ``({}, reason)``: applying
    them could skip examples, or seek past the end of a younger topic."""
    mine = {k: v for k, v in saved.items() if k.rpartition(":")[0] == topic}
    if not mine:
        return {}, ""
    if not saved_cluster_id or topic not in saved_topic_ids:
        return {}, "the checkpoint does not record which Kafka cluster and topic its offsets are from"
    if current is None:
        return {}, "the Kafka cluster's id and topic ids could not be read"
    if saved_cluster_id != current.cluster_id:
        return {}, (f"its offsets are from Kafka cluster {saved_cluster_id}, "
                    f"this is cluster {current.cluster_id}")
    if saved_topic_ids[topic] != current.topic_ids.get(topic):
        return {}, (f"its offsets are from another instance of topic {topic!r} (id "
                    f"{saved_topic_ids[topic]}, now {current.topic_ids.get(topic, 'missing')})")
    return mine, ""


class ExampleSource:
    """Decoded examples with their (partition, offset), from an explicit set of partitions."""

    def __init__(self, settings: Settings, partitions: Iterable[int],
                 start: dict[str, int] | None = None) -> None:
        self.topic = settings.topics.examples
        self.partitions = sorted(partitions)
        self._consumer = confluent_kafka.Consumer(client_config(settings.kafka, **{
            "group.id": GROUP_TRAINER,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 50,
        }))
        start = start or {}
        committed = {tp.partition: tp.offset for tp in committed_offsets(
            self._consumer, [confluent_kafka.TopicPartition(self.topic, p) for p in self.partitions])}
        assignment = []
        for p in self.partitions:
            # The checkpoint's offset wins; else the group's commit; else the beginning.
            off = start.get(offset_key(self.topic, p), committed.get(p, -1001))
            if off < 0:
                off = confluent_kafka.OFFSET_BEGINNING
            assignment.append(confluent_kafka.TopicPartition(self.topic, p, off))
        self._consumer.assign(assignment)
        self.invalid = 0

    def poll(self, max_n: int, timeout_s: float) -> list[tuple[int, int, ExampleRow]]:
        """Up to ``max_n`` ``(partition, offset, example)`` in arrival order, within about
        ``timeout_s`` (s) in all. Undecodable messages are counted in ``invalid`` and skipped;
        raises :class:`BrokerError` on a consumer error other than partition EOF."""
        out: list[tuple[int, int, ExampleRow]] = []
        deadline = time.monotonic() + timeout_s
        while len(out) < max_n:
            remaining = deadline - time.monotonic()
            msgs = self._consumer.consume(max_n - len(out), max(0.0, remaining))
            for m in msgs:
                if m.error():
                    if m.error().code() == confluent_kafka.KafkaError._PARTITION_EOF:
                        continue
                    raise BrokerError(f"examples consumer: {m.error().str()}")
                try:
                    out.append((m.partition(), m.offset(), decode_row(m.value())))
                except InvalidExample:
                    self.invalid += 1  # not ours to fix: the ingest agent writes this topic
                    log.error("undecodable example at %s/%d/%d", self.topic, m.partition(),
                              m.offset())
            if not msgs or remaining <= 0:
                break
        return out

    def commit(self, offsets: dict[str, int]) -> None:
        """Commit this source's partitions found in ``offsets`` (next offsets, keyed by
        :func:`offset_key`) to the consumer group; a failure is logged, not raised."""
        tps = [confluent_kafka.TopicPartition(self.topic, p, offsets[offset_key(self.topic, p)])
               for p in self.partitions if offset_key(self.topic, p) in offsets]
        if tps:
            try:
                self._consumer.commit(offsets=tps, asynchronous=False)
            except confluent_kafka.KafkaException as exc:
                log.warning("offset commit failed (the checkpoint still holds them): %s", exc)

    def close(self) -> None:
        """Close the Kafka consumer."""
        self._consumer.close()
