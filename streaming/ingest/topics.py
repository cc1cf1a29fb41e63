"""Faust topic handles for the topics streamrec owns (names and partitions from settings)."""

from __future__ import annotations

from dataclasses import dataclass

import faust

from streaming.settings import Settings


@dataclass(frozen=True, slots=True)
class Topics:
    """The Faust topics of the ingest worker: events in; dead letters and training examples out."""

    events: faust.TopicT
    dlq: faust.TopicT
    examples: faust.TopicT


def define_topics(app: faust.App, settings: Settings) -> Topics:
    """Handles on ``app`` for the topics in ``settings`` (raw bytes keys and values). Declaring
    creates nothing: :meth:`streaming.io.kafka.KafkaAdmin.ensure_topics` creates the topics."""
    t = settings.topics
    return Topics(
        events=app.topic(t.events, partitions=t.events_partitions, key_type=bytes,
                         value_type=bytes),
        dlq=app.topic(t.dlq, partitions=t.dlq_partitions, key_type=bytes, value_type=bytes),
        examples=app.topic(t.examples, partitions=t.examples_partitions, key_type=bytes,
                           value_type=bytes),
    )
