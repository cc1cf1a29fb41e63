from __future__ import annotations

import collections

import pytest

from streaming.errors import DeliveryError
from streaming.io.kafka import KafkaAdmin, topic_specs
from streaming.io.producer import EventProducer
from streaming.settings import Settings
from streaming.sources.synthetic import SyntheticConfig, SyntheticStream
from tests.integration.helpers import consume_all

pytestmark = pytest.mark.integration


def test_topics_are_created_once_with_configured_partitions(services: Settings) -> None:
    settings = services.with_values({
        "topics.events": "ensure-events", "topics.dlq": "ensure-dlq",
        "topics.examples": "ensure-examples", "topics.model_updates": "ensure-updates",
        "topics.events_partitions": "3",
    })
    admin = KafkaAdmin(settings)
    first = admin.ensure_topics(topic_specs(settings))
    assert sorted(first.created) == sorted(s.name for s in topic_specs(settings))
    second = admin.ensure_topics(topic_specs(settings))
    assert second.created == [] and len(second.existing) == 4 and not second.mismatched
    assert admin.partitions("ensure-events") == 3
    assert admin.topic_config("ensure-updates")["cleanup.policy"] == "compact"

    grown = settings.with_values({"topics.events_partitions": "5"})
    assert admin.ensure_topics(topic_specs(grown)).mismatched == {"ensure-events": (5, 3)}


def test_events_roundtrip_keyed_by_user(stack: Settings) -> None:
    events = list(SyntheticStream(2, SyntheticConfig(n_users=50, n_items=100)).events(
        1_732_000_000_000, rate=100.0, limit=3000))
    with EventProducer(stack) as producer:
        for e in events:
            producer.send(e)
    assert producer.stats.delivered == 3000 and producer.stats.failed == 0

    msgs = consume_all(stack, stack.topics.events, 3000)
    assert sorted(m.value() for m in msgs) == sorted(e.to_json() for e in events)
    partitions_of_user: dict[bytes, set[int]] = collections.defaultdict(set)
    for m in msgs:
        partitions_of_user[m.key()].add(m.partition())
    assert all(len(p) == 1 for p in partitions_of_user.values())
    assert len({p for ps in partitions_of_user.values() for p in ps}) > 1


def test_full_queue_blocks_instead_of_dropping(stack: Settings) -> None:
    with EventProducer(stack, max_queued_messages=20, linger_ms=50) as producer:
        for n in range(2000):
            producer.send_raw(b"u", b'{"n": %d}' % n)
    assert producer.stats.delivered == 2000
    assert len(consume_all(stack, stack.topics.events, 2000)) == 2000


def test_undeliverable_messages_raise_instead_of_vanishing(services: Settings) -> None:
    from streaming.ops.process import free_port

    dead = services.with_values({"kafka.bootstrap_servers": f"127.0.0.1:{free_port()}"})
    producer = EventProducer(dead, extra_config={"message.timeout.ms": 1500})
    producer.send_raw(b"u", b"{}")
    with pytest.raises(DeliveryError) as info:
        producer.flush(10)
    assert info.value.failed == 1
