"""Prometheus metrics of every component, and the HTTP endpoint that serves them.

Each component builds its own metrics object on its own ``CollectorRegistry`` (no module-level
metric globals: tests and several components in one process stay independent) and serves it
with :func:`serve` when ``runtime.metrics_port`` is set (``streamrec up`` gives every component
a free port and lists them in ``.streamrec/current.json``).

Names follow Prometheus conventions (``_total`` counters, ``_seconds`` units); consumer lag
uses kafka-exporter's names (``kafka_consumergroup_lag``, ``kafka_consumergroup_lag_seconds``)
so existing dashboards and alerts apply. :func:`metric_names` lists every exported family; the
Grafana dashboard in ``deploy/`` is checked against it.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from streaming.settings import RuntimeSettings

# Seconds; from Redis round trips to label windows of several minutes.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
                   120.0, 300.0, 600.0, 1800.0, 3600.0)
STAGES = ("event_to_feature", "event_to_example", "example_to_trained", "checkpoint_publish",
          "model_load", "event_to_feed")
STATUS_CODES = {"OK": 0, "WARNING": 1, "STALLED": 2, "STOPPED": 3}


def _stage_histogram(registry: CollectorRegistry) -> Histogram:
    return Histogram("streamrec_stage_latency_seconds",
                     "Latency of a pipeline stage (s): event time -> feature applied, -> example "
                     "emitted, example -> trained, checkpoint publish, model load, event -> feed",
                     ["stage"], buckets=LATENCY_BUCKETS, registry=registry)


def _errors(registry: CollectorRegistry) -> tuple[Counter, Counter]:
    return (Counter("streamrec_redis_errors_total", "Redis operations that failed",
                    ["component"], registry=registry),
            Counter("streamrec_kafka_errors_total", "Kafka client errors seen",
                    ["component"], registry=registry))


class IngestMetrics:
    """The ingest workers' metrics: events by outcome, dead-lettered records, examples emitted,
    stage latency, client errors."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.events = Counter("streamrec_events_total",
                              "Events read by the ingest workers, by outcome", ["outcome"],
                              registry=r)
        self.dead_lettered = Counter("streamrec_dead_lettered_total",
                                     "Records sent to the dead-letter topic", registry=r)
        self.examples = Counter("streamrec_examples_total", "Training examples emitted",
                                registry=r)
        self.dlq_reduced = Counter("streamrec_dlq_reduced_total",
                                   "DLQ records cut to fit the broker: truncated (value cut to "
                                   "stream.dlq_max_value_bytes) or metadata_only (refused, "
                                   "sent without key and value)", ["how"], registry=r)
        self.parked = Counter("streamrec_outbox_parked_total",
                              "Outbox records the broker refused for good, moved aside "
                              "(P obp:<partition>) instead of blocking the partition", registry=r)
        self.stage = _stage_histogram(r)
        self.redis_errors, self.kafka_errors = _errors(r)
        for outcome in ("processed", "accepted", "invalid", "duplicate"):
            self.events.labels(outcome)
        for how in ("truncated", "metadata_only"):
            self.dlq_reduced.labels(how)

    def record_delivery(self, counts: Mapping[str, int]) -> None:
        """Count what producing the outbox took: reduced DLQ records and parked records."""
        self.dlq_reduced.labels("truncated").inc(counts.get("dlq_truncated", 0))
        self.dlq_reduced.labels("metadata_only").inc(counts.get("dlq_metadata_only", 0))
        self.parked.inc(counts.get("parked", 0))

    def record_batch(self, counts: dict[str, int], event_ages_s: list[float]) -> None:
        """Count one batch (``counts``: the processor's counters) and observe each message's age
        (s) as the ``event_to_feature`` latency."""
        for outcome in ("processed", "accepted", "invalid", "duplicate"):
            if counts.get(outcome):
                self.events.labels(outcome).inc(counts[outcome])
        self.dead_lettered.inc(counts.get("invalid", 0))
        self.examples.inc(counts.get("examples", 0))
        stage = self.stage.labels("event_to_feature")
        for age in event_ages_s:
            stage.observe(age)


class TrainerMetrics:
    """The trainer's metrics: examples, steps, loss, prequential AUC and log-loss, checkpoints,
    model version, stage latency, client errors."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.examples = Counter("streamrec_trainer_examples_total", "Examples trained on",
                                registry=r)
        self.steps = Counter("streamrec_trainer_steps_total", "Optimizer steps", registry=r)
        self.loss = Gauge("streamrec_trainer_loss", "Training loss of the last step", registry=r)
        self.auc = Gauge("streamrec_trainer_prequential_auc",
                         "Prequential AUC (scored before training) over the recent window",
                         registry=r)
        self.logloss = Gauge("streamrec_trainer_prequential_logloss",
                             "Prequential log-loss over the recent window", registry=r)
        for unknown in (self.loss, self.auc, self.logloss):
            unknown.set(float("nan"))  # until the first step / publish, not a fake 0
        self.checkpoints = Counter("streamrec_checkpoints_published_total",
                                   "Checkpoints published", registry=r)
        self.model_version = Gauge("streamrec_model_version", "Model version", ["component"],
                                   registry=r)
        self.stage = _stage_histogram(r)
        self.redis_errors, self.kafka_errors = _errors(r)


class ScorerMetrics:
    """The scorers' metrics: feeds written, users waiting, model version and loads, item cache
    lookups and misses, stage latency, client errors."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.feeds = Counter("streamrec_feeds_written_total", "Feeds written to Redis",
                             registry=r)
        self.pending = Gauge("streamrec_scorer_pending_users", "Users waiting for a refresh",
                             registry=r)
        self.model_version = Gauge("streamrec_model_version", "Model version", ["component"],
                                   registry=r)
        self.model_loads = Counter("streamrec_model_loads_total", "Model loads by result",
                                   ["result"], registry=r)
        # Their ratio is the item cache's miss rate (item state is cached until it changes).
        self.item_lookups = Counter("streamrec_scorer_item_lookups_total",
                                    "Distinct candidate items whose state a batch needed",
                                    registry=r)
        self.item_reads = Counter("streamrec_scorer_item_reads_total",
                                  "Item hashes read from Redis (item cache misses)", registry=r)
        self.stage = _stage_histogram(r)
        self.redis_errors, self.kafka_errors = _errors(r)
        for result in ("ok", "failed"):
            self.model_loads.labels(result)


class LagMetrics:
    """The lag monitor's metrics: kafka-exporter's lag and offset gauges, the group status, and
    the watermark anomaly."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        labels = ["consumergroup", "topic", "partition"]
        self.lag = Gauge("kafka_consumergroup_lag", "Log-end offset - committed offset",
                         labels, registry=r)
        self.lag_seconds = Gauge("kafka_consumergroup_lag_seconds",
                                 "Age (s) of the oldest unconsumed message", labels, registry=r)
        self.current = Gauge("kafka_consumergroup_current_offset", "Committed offset", labels,
                             registry=r)
        self.log_end = Gauge("kafka_topic_partition_current_offset",
                             "Log-end offset (high watermark) as the broker reports it",
                             ["topic", "partition"], registry=r)
        self.status = Gauge("streamrec_consumergroup_status",
                            "Burrow-style status: 0 OK, 1 WARNING, 2 STALLED, 3 STOPPED",
                            ["consumergroup"], registry=r)
        self.anomaly = Gauge("streamrec_lag_watermark_anomaly",
                             "1 when the broker's log-end offset is below the committed offset",
                             labels, registry=r)


class SupervisorMetrics:
    """``streamrec up``'s supervisor: restarts per component, and whether each is running."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.restarts = Counter("streamrec_component_restarts_total",
                                "Times the supervisor restarted a component that exited",
                                ["component"], registry=r)
        self.running = Gauge("streamrec_component_running",
                             "1 while the component's process runs, 0 while it waits for a "
                             "restart", ["component"], registry=r)


def metric_names() -> set[str]:
    """Every exported metric family name (as Prometheus sees it, with histogram and counter
    suffixes)."""
    names: set[str] = set()
    for metrics in (IngestMetrics(), TrainerMetrics(), ScorerMetrics(), LagMetrics(),
                    SupervisorMetrics()):
        for family in metrics.registry.collect():
            names.add(family.name)
            suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
            names.update(family.name + s for s in suffixes.get(family.type, ()))
    return names


@dataclass
class MetricsServer:
    """A running ``/metrics`` endpoint (from :func:`serve`); :meth:`close` stops it."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        """The port it listens on (the one picked when started with 0)."""
        return int(self.server.server_port)

    def close(self) -> None:
        """Stop serving and join the thread (up to 5 s)."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def serve(registry: CollectorRegistry, port: int, host: str = "127.0.0.1") -> MetricsServer:
    """Serve ``/metrics`` on ``host:port`` (0 = any free port) from a daemon thread."""
    server, thread = start_http_server(port, host, registry)
    return MetricsServer(server, thread)


def serve_configured(registry: CollectorRegistry, runtime: RuntimeSettings) -> MetricsServer | None:
    """:func:`serve` on ``runtime.metrics_port``; None when it is 0 (not served)."""
    if not runtime.metrics_port:
        return None
    return serve(registry, runtime.metrics_port, runtime.bind_host)
