"""The embedded Apache Kafka 4.x broker (``deploy.kafka_broker``) against real clients.

One broker per module (a start costs a few seconds): it is started by a module-scoped fixture,
so the leak guard in ``tests/conftest.py`` counts its JVM in the baseline. The restart test
starts a new JVM and stops it before it returns, leaving no child behind.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from deploy.kafka_broker import KAFKA_VERSION, KafkaBroker

pytestmark = pytest.mark.integration

MESSAGES = 1_010  # 10 single-message batches + one batch of 1,000


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    kafka = KafkaBroker(tmp_path_factory.mktemp("apache-kafka"), heap_mb=512)
    with kafka:
        yield kafka


def _create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)],
                                  operation_timeout=30)
    futures[name].result(timeout=30)


def _high_watermark(bootstrap: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"wm-{uuid.uuid4().hex[:6]}"})
    try:
        _low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10, cached=False)
        return int(high)
    finally:
        consumer.close()


@pytest.fixture(scope="module")
def loaded_topic(broker: KafkaBroker) -> str:
    """A 1-partition topic holding 10 single-message batches and then one 1,000-message batch,
    each flushed before the next."""
    topic = f"apache-kafka-{uuid.uuid4().hex[:8]}"
    _create_topic(broker.bootstrap_servers, topic, partitions=1)
    producer = Producer({"bootstrap.servers": broker.bootstrap_servers, "linger.ms": 5})
    failed: list[str] = []

    def on_delivery(err: object, _msg: object) -> None:
        if err is not None:
            failed.append(str(err))

    for i in range(10):
        producer.produce(topic, key=b"single", value=f"single-{i}".encode(), on_delivery=on_delivery)
        assert producer.flush(30) == 0
    for i in range(1_000):
        producer.produce(topic, key=b"batch", value=f"batch-{i}".encode(), on_delivery=on_delivery)
    assert producer.flush(30) == 0
    assert failed == []
    return topic


def test_broker_reports_version_and_cluster(broker: KafkaBroker) -> None:
    assert broker.version == KAFKA_VERSION and KAFKA_VERSION.startswith("4.")
    md = AdminClient({"bootstrap.servers": broker.bootstrap_servers}).list_topics(timeout=10)
    assert md.cluster_id == broker.cluster_id
    assert list(md.brokers) == [1]
    assert broker.bootstrap_servers.startswith("127.0.0.1:")


def test_kip848_consumer_gets_partitions_assigned(broker: KafkaBroker) -> None:
    topic = f"kip848-{uuid.uuid4().hex[:8]}"
    _create_topic(broker.bootstrap_servers, topic, partitions=3)
    consumer = Consumer({
        "bootstrap.servers": broker.bootstrap_servers,
        "group.id": f"kip848-{uuid.uuid4().hex[:6]}",
        "group.protocol": "consumer",  # the KIP-848 rebalance protocol, not "classic"
        "auto.offset.reset": "earliest",
    })
    try:
        consumer.subscribe([topic])
        assigned: list[TopicPartition] = []
        for _ in range(100):  # up to ~50 s; takes well under a second
            msg = consumer.poll(0.5)
            assert msg is None or msg.error() is None or not msg.error().fatal()
            assigned = consumer.assignment()
            if len(assigned) == 3:
                break
        assert sorted(tp.partition for tp in assigned) == [0, 1, 2]
        assert {tp.topic for tp in assigned} == {topic}
    finally:
        consumer.close()


def test_batches_give_exact_high_watermark(broker: KafkaBroker, loaded_topic: str) -> None:
    assert _high_watermark(broker.bootstrap_servers, loaded_topic) == MESSAGES


def test_restart_keeps_topic_messages_and_committed_offset(
        broker: KafkaBroker, loaded_topic: str) -> None:
    group = f"durable-{uuid.uuid4().hex[:6]}"
    tp = TopicPartition(loaded_topic, 0, 500)
    consumer = Consumer({"bootstrap.servers": broker.bootstrap_servers, "group.id": group,
                         "enable.auto.commit": False})
    try:
        consumer.commit(offsets=[tp], asynchronous=False)
    finally:
        consumer.close()
    bootstrap, cluster_id = broker.bootstrap_servers, broker.cluster_id

    broker.stop()
    assert not broker.running
    # A new object on the same data dir, as a new process would make.
    again = KafkaBroker(broker.data_dir, cache_dir=broker.cache_dir)
    try:
        again.start()
        assert again.cluster_id == cluster_id
        assert again.bootstrap_servers == bootstrap  # ports reused: clients reconnect as they were
        md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
        assert loaded_topic in md.topics
        assert _high_watermark(bootstrap, loaded_topic) == MESSAGES
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                             "enable.auto.commit": False})
        try:
            committed = consumer.committed([TopicPartition(loaded_topic, 0)], timeout=30)
        finally:
            consumer.close()
        assert [(c.topic, c.partition, c.offset) for c in committed] == [(loaded_topic, 0, 500)]
    except KafkaException as exc:
        pytest.fail(f"after restart: {exc}\n{again.log_tail()}")
    finally:
        again.stop()  # the JVM started here is not in the leak guard's baseline
