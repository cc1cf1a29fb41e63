"""The embedded runtime itself: Apache Kafka by default, durable in one data directory that one
runtime at a time may use and ``runtime.fresh`` empties; Tansu as the Java-free choice."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from deploy.embedded import EmbeddedRuntime
from deploy.kafka_broker import KAFKA_VERSION
from streaming.errors import EmbeddedServiceError
from streaming.io.kafka import KafkaAdmin, topic_specs
from streaming.io.producer import RecordProducer
from streaming.io.redis_client import connect
from streaming.settings import Settings
from tests.integration.helpers import consume_all

pytestmark = pytest.mark.integration


def _settings(tmp_path: Path, **values: str) -> Settings:
    return Settings.load(env={}).with_values({"runtime.run_dir": str(tmp_path), **values})


def _send(settings: Settings, n: int) -> None:
    with RecordProducer(settings) as producer:
        for k in range(n):
            producer.send_raw(f"k{k}".encode(), f"v{k}".encode())


def test_tansu_runs_the_topics_without_java_and_keeps_nothing(tmp_path: Path) -> None:
    settings = _settings(tmp_path, **{"runtime.broker": "tansu"})
    with EmbeddedRuntime(settings, run_dir=tmp_path / "run") as runtime:
        s = runtime.settings
        assert runtime.broker is not None and runtime.broker.kind == "Tansu"
        assert "in-memory" in runtime.broker.describe()
        assert [p.name for p in runtime.processes] == ["kafka (tansu)", "redis"]
        # Redis' watermarks are offsets of a broker that forgets them: Redis' data ends too.
        assert runtime.redis_dir == tmp_path / "run" / "redis" and not runtime.durable
        KafkaAdmin(s).ensure_topics(topic_specs(s))
        _send(s, 20)
        assert len(consume_all(s, s.topics.events, 20)) == 20
    assert not (tmp_path / "data").exists()


def test_one_runtime_per_data_dir_and_fresh_starts_empty(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    with EmbeddedRuntime(settings, run_dir=tmp_path / "run-1") as first:
        s = first.settings
        assert first.broker is not None and first.broker.kind == "Apache Kafka"
        assert first.broker.version == KAFKA_VERSION
        assert first.broker.data_dir == (tmp_path / "data" / "kafka").resolve()
        assert first.redis_dir == (tmp_path / "data" / "redis").resolve() and first.durable
        cluster = first.broker.cluster_id
        KafkaAdmin(s).ensure_topics(topic_specs(s))
        _send(s, 5)
        key = f"probe-{uuid.uuid4().hex[:6]}"
        client = connect(s.redis)
        client.set(key, "kept")
        client.close()
        # A second runtime on the same data directory would corrupt it: refused, and says why.
        with pytest.raises(EmbeddedServiceError, match="in use by another streamrec"):
            EmbeddedRuntime(settings, run_dir=tmp_path / "run-2").start()

    fresh = settings.with_values({"runtime.fresh": "true"})
    with EmbeddedRuntime(fresh, run_dir=tmp_path / "run-3") as again:
        s = again.settings
        assert again.broker is not None and again.broker.cluster_id != cluster
        assert KafkaAdmin(s).partitions(s.topics.events) is None
        client = connect(s.redis)
        assert client.get(key) is None
        client.close()
