"""Thin confluent-kafka adapter: client configuration, admin calls, topic creation.

Library errors are translated to :mod:`streaming.errors` here, where the library is called.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import confluent_kafka
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from streaming.errors import BrokerError, ConfigError
from streaming.settings import KafkaSettings, Settings

log = logging.getLogger(__name__)
# librdkafka's own log lines (connection refused while a broker starts, disconnects at shutdown)
# go through Python logging instead of raw stderr; they are routine below WARNING.
rdkafka_log = logging.getLogger("streamrec.librdkafka")


def client_config(kafka: KafkaSettings, **extra: Any) -> dict[str, Any]:
    """librdkafka configuration for producers, consumers and admin clients.

    Security options are passed through only when set, so the same code talks to a plaintext
    embedded broker and to an MSK/Confluent cluster with SASL_SSL.
    """
    if not kafka.bootstrap_servers:
        raise ConfigError(
            "no Kafka bootstrap servers: set KAFKA_BOOTSTRAP_SERVERS, or run `streamrec up` "
            "(its endpoints are picked up automatically)"
        )
    conf: dict[str, Any] = {
        "bootstrap.servers": kafka.bootstrap_servers,
        "client.id": kafka.client_id,
        "security.protocol": kafka.security_protocol.upper(),
        "logger": rdkafka_log,
    }
    optional = {
        "sasl.mechanism": kafka.sasl_mechanism,
        "sasl.username": kafka.sasl_username,
        "sasl.password": kafka.sasl_password,
        "ssl.ca.location": kafka.ssl_ca_location,
        "ssl.certificate.location": kafka.ssl_certificate_location,
        "ssl.key.location": kafka.ssl_key_location,
    }
    conf.update({k: v for k, v in optional.items() if v})
    conf.update(extra)
    return conf


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic streamrec needs: name, partition count, and topic configs (``cleanup.policy``, ...)."""

    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """The topics streamrec needs. ``model-updates`` is compacted: the latest announcement per
    model name survives, so a scorer that starts late still finds the newest checkpoint."""
    t = settings.topics
    return [
        TopicSpec(t.events, t.events_partitions),
        TopicSpec(t.dlq, t.dlq_partitions),
        TopicSpec(t.examples, t.examples_partitions),
        TopicSpec(t.model_updates, 1, {"cleanup.policy": "compact"}),
    ]


@dataclass(slots=True)
class TopicReport:
    """What :meth:`KafkaAdmin.ensure_topics` found: topics created, topics that existed, and
    existing ones whose partition count differs (``name -> (wanted, actual)``)."""

    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    # Existing topics whose partition count differs from the settings: left as they are
    # (shrinking is impossible, growing re-maps keys), but reported.
    mismatched: dict[str, tuple[int, int]] = field(default_factory=dict)


class KafkaAdmin:
    """The admin operations streamrec needs, with errors translated."""

    def __init__(
        self, settings: Settings, timeout_s: float = 10.0, *, quiet: bool = False
    ) -> None:
        self._settings = settings
        self._timeout_s = timeout_s
        # quiet: for probing a broker that is still starting, where "connection refused" is normal.
        extra = {"log_level": 2} if quiet else {}
        self._admin = AdminClient(client_config(settings.kafka, **extra))

    def wait_ready(self, timeout_s: float = 30.0) -> int:
        """Block until a metadata request succeeds; returns the number of brokers."""
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                md = self._admin.list_topics(timeout=min(2.0, max(0.1, deadline - time.monotonic())))
                if md.brokers:
                    return len(md.brokers)
            except confluent_kafka.KafkaException as exc:
                last = exc
            time.sleep(0.1)
        raise BrokerError(
            f"Kafka at {self._settings.kafka.bootstrap_servers} not reachable within "
            f"{timeout_s:.0f} s: {last}"
        )

    def partitions(self, topic: str) -> int | None:
        """Partition count of ``topic``, or None if it does not exist."""
        md = self._list_topics(topic)
        tmd = md.topics.get(topic)
        if tmd is None or tmd.error is not None:
            return None
        return len(tmd.partitions)

    def ensure_topics(self, specs: Iterable[TopicSpec]) -> TopicReport:
        """Create missing topics; leave existing ones alone. Safe to call from every process."""
        specs = list(specs)
        report = TopicReport()
        rf = self._settings.topics.replication_factor
        new = [NewTopic(s.name, s.partitions, rf, config=s.config) for s in specs]
        futures = self._admin.create_topics(new, request_timeout=self._timeout_s)
        for spec in specs:
            try:
                futures[spec.name].result()
                report.created.append(spec.name)
            except confluent_kafka.KafkaException as exc:
                err = exc.args[0]
                if err.code() != confluent_kafka.KafkaError.TOPIC_ALREADY_EXISTS:
                    raise BrokerError(f"cannot create topic {spec.name!r}: {err.str()}") from None
                report.existing.append(spec.name)
                actual = self.partitions(spec.name)
                if actual is not None and actual != spec.partitions:
                    report.mismatched[spec.name] = (spec.partitions, actual)
                    log.warning(
                        "topic %s has %d partitions, settings ask for %d; leaving it unchanged",
                        spec.name, actual, spec.partitions,
                    )
        return report

    def topic_config(self, topic: str) -> dict[str, str]:
        """The configuration of ``topic`` (name -> value). Raises :class:`BrokerError`."""
        futures = self._admin.describe_configs([ConfigResource("topic", topic)])
        try:
            (fut,) = futures.values()
            return {name: entry.value for name, entry in fut.result().items()}
        except confluent_kafka.KafkaException as exc:
            raise BrokerError(f"cannot describe topic {topic!r}: {exc}") from None

    def _list_topics(self, topic: str | None = None) -> Any:
        try:
            return self._admin.list_topics(topic=topic, timeout=self._timeout_s)
        except confluent_kafka.KafkaException as exc:
            raise BrokerError(f"metadata request failed: {exc}") from None
