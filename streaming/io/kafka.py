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
from confluent_kafka import TopicCollection
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


@dataclass(frozen=True, slots=True)
class ClusterIdentity:
    """Which Kafka cluster, and which instance of each topic: offsets only mean something for
    the topic instance they were read from (a topic deleted and created again under the same
    name, or a new cluster, starts again at offset 0 with a new id)."""

    cluster_id: str
    topic_ids: dict[str, str] = field(default_factory=dict)  # topic name -> topic id


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

    def wait_group_coordinator(self, groups: Iterable[str], timeout_s: float = 60.0) -> None:
        """Block until the group coordinator answers for each of ``groups``. On a new cluster
        the first group request creates ``__consumer_offsets``, and its partitions load for a
        moment, during which group requests fail with NOT_COORDINATOR."""
        deadline = time.monotonic() + timeout_s
        pending = list(groups)
        last = ""
        while pending:
            futures = self._admin.describe_consumer_groups(pending, request_timeout=self._timeout_s)
            for group, fut in futures.items():
                try:
                    fut.result()
                    pending.remove(group)
                except confluent_kafka.KafkaException as exc:
                    last = exc.args[0].str()
            if pending and time.monotonic() >= deadline:
                raise BrokerError(f"the group coordinator did not answer for {pending} within "
                                  f"{timeout_s:.0f} s: {last}")
            if pending:
                time.sleep(0.1)

    def partitions(self, topic: str) -> int | None:
        """Partition count of ``topic``, or None if it does not exist."""
        md = self._list_topics(topic)
        tmd = md.topics.get(topic)
        if tmd is None or tmd.error is not None:
            return None
        return len(tmd.partitions)

    def ensure_topics(self, specs: Iterable[TopicSpec], retry_s: float = 60.0) -> TopicReport:
        """Create missing topics; leave existing ones alone. Safe to call from every process.

        Returns once every topic of ``specs`` is in the metadata with a leader for each of its
        partitions: a broker answers CreateTopics before its metadata shows the new topic, and a
        client that asks in between would be told the topic does not exist. Errors that go away
        by themselves (a broker restarting, a controller moving) are retried for up to
        ``retry_s``; others raise :class:`BrokerError` at once."""
        specs = list(specs)
        report = TopicReport()
        deadline = time.monotonic() + retry_s
        todo = specs
        while todo:
            todo = self._create(todo, report)
            if todo:
                if time.monotonic() >= deadline:
                    raise BrokerError(f"cannot create topics {[s.name for s in todo]}: Kafka did "
                                      f"not answer within {retry_s:.0f} s")
                time.sleep(0.5)
        self._wait_for_leaders([s.name for s in specs], deadline)
        return report

    def _create(self, specs: list[TopicSpec], report: TopicReport) -> list[TopicSpec]:
        """One CreateTopics request; records the outcome in ``report`` and returns the specs
        that failed with a transient error (to try again)."""
        rf = self._settings.topics.replication_factor
        new = [NewTopic(s.name, s.partitions, rf, config=s.config) for s in specs]
        futures = self._admin.create_topics(new, request_timeout=self._timeout_s)
        again = []
        for spec in specs:
            try:
                futures[spec.name].result()
                report.created.append(spec.name)
            except confluent_kafka.KafkaException as exc:
                err = exc.args[0]
                if err.code() in TRANSIENT_ERRORS or err.retriable():
                    log.info("creating topic %s: %s; trying again", spec.name, err.str())
                    again.append(spec)
                    continue
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
        return again

    def _wait_for_leaders(self, topics: list[str], deadline: float) -> None:
        pending = list(topics)
        last = ""
        while True:
            try:
                pending = [t for t in pending
                           if not _has_leaders(self._list_topics(t).topics.get(t))]
            except BrokerError as exc:  # the broker went away meanwhile
                last = f": {exc}"
            if not pending:
                return
            if time.monotonic() >= deadline:
                raise BrokerError(f"topics {pending} have no leader for every partition{last}")
            time.sleep(0.05)

    def identity(self, topics: Iterable[str]) -> ClusterIdentity:
        """The cluster id and the id of each of ``topics`` that exists (DescribeCluster and
        DescribeTopics). Raises :class:`BrokerError` when the broker does not answer."""
        try:
            cluster = self._admin.describe_cluster(request_timeout=self._timeout_s).result()
            topic_ids: dict[str, str] = {}
            names = list(topics)
            if names:
                futures = self._admin.describe_topics(TopicCollection(names),
                                                      request_timeout=self._timeout_s)
                for name, fut in futures.items():
                    try:
                        topic_ids[name] = str(fut.result().topic_id)
                    except confluent_kafka.KafkaException as exc:
                        if exc.args[0].code() != confluent_kafka.KafkaError.UNKNOWN_TOPIC_OR_PART:
                            raise
        except confluent_kafka.KafkaException as exc:
            raise BrokerError(f"cannot describe the Kafka cluster: {exc}") from None
        if not cluster.cluster_id:
            raise BrokerError("the Kafka cluster reported no cluster id")
        return ClusterIdentity(str(cluster.cluster_id), topic_ids)

    def topic_config(self, topic: str) -> dict[str, str]:
        """The configuration of ``topic`` (name -> value). Raises :class:`BrokerError`."""
        futures = self._admin.describe_configs([ConfigResource("topic", topic)])
        try:
            (fut,) = futures.values()
            return {name: entry.value for name, entry in fut.result().items()}
        except confluent_kafka.KafkaException as exc:
            raise BrokerError(f"cannot describe topic {topic!r}: {exc}") from None

    def _list_topics(self, topic: str | None = None) -> Any:
        """Metadata of ``topic`` (every topic if None); raises :class:`BrokerError`."""
        try:
            return self._admin.list_topics(topic=topic, timeout=self._timeout_s)
        except confluent_kafka.KafkaException as exc:
            raise BrokerError(f"metadata request failed: {exc}") from None


#: Errors that go away by themselves: a broker restarting, a controller or coordinator moving
#: or loading.
TRANSIENT_ERRORS = frozenset({
    confluent_kafka.KafkaError._TIMED_OUT,
    confluent_kafka.KafkaError._TRANSPORT,
    confluent_kafka.KafkaError._ALL_BROKERS_DOWN,
    confluent_kafka.KafkaError.REQUEST_TIMED_OUT,
    confluent_kafka.KafkaError.NOT_CONTROLLER,
    confluent_kafka.KafkaError.NOT_COORDINATOR,
    confluent_kafka.KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    confluent_kafka.KafkaError.COORDINATOR_NOT_AVAILABLE,
})


def committed_offsets(consumer: confluent_kafka.Consumer, partitions: list[confluent_kafka.TopicPartition],
                      timeout_s: float = 60.0) -> list[confluent_kafka.TopicPartition]:
    """``consumer.committed(partitions)``, retried while the group coordinator is moving,
    loading or unreachable (a broker restarting, a new cluster) for up to ``timeout_s``.
    Raises :class:`BrokerError` on other errors or when time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return list(consumer.committed(partitions, timeout=min(10.0, timeout_s)))
        except confluent_kafka.KafkaException as exc:
            err = exc.args[0]
            if err.code() not in TRANSIENT_ERRORS or time.monotonic() >= deadline:
                raise BrokerError(f"cannot read committed offsets: {err.str()}") from None
            log.info("committed offsets not readable yet (%s); retrying", err.str())
            time.sleep(0.2)


def _has_leaders(meta: Any) -> bool:
    """A topic's metadata lists it without error and every partition has a leader."""
    return (meta is not None and meta.error is None and bool(meta.partitions)
            and all(p.leader >= 0 and p.error is None for p in meta.partitions.values()))
