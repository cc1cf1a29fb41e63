"""The Faust application of the stream processor, built from settings (nothing at import time).

One worker process runs :func:`create_app`'s app; more workers on any machines, with the same
settings, join the same consumer group (``GROUP_INGEST``) and share the partitions of the
events topic. Per-user state is keyed by user and the events topic is keyed by user, so a worker
owns its users' state while it owns their partition; no repartition topic is needed.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import faust

from streaming.contract.names import GROUP_INGEST
from streaming.ingest.topics import define_topics
from streaming.ops.metrics import IngestMetrics
from streaming.settings import Settings

APP_ID = GROUP_INGEST  # the Faust app id is its consumer group


def broker_credentials(settings: Settings) -> Any:
    """Faust (aiokafka) credentials equivalent to the librdkafka security settings."""
    k = settings.kafka
    proto = k.security_protocol.upper()
    ssl_context = None
    if proto in ("SSL", "SASL_SSL"):
        ssl_context = ssl.create_default_context(cafile=k.ssl_ca_location or None)
        if k.ssl_certificate_location:
            ssl_context.load_cert_chain(k.ssl_certificate_location, k.ssl_key_location or None)
    if proto.startswith("SASL"):
        return faust.SASLCredentials(
            username=k.sasl_username, password=k.sasl_password,
            mechanism=k.sasl_mechanism, ssl_context=ssl_context,
        )
    if ssl_context is not None:
        return faust.SSLCredentials(ssl_context)
    return None


def create_app(settings: Settings, *, app_id: str = APP_ID, metrics: IngestMetrics | None = None,
               **overrides: Any) -> faust.App:
    """The ingest worker's Faust app with the ingest agent registered; connects to nothing yet.

    Brokers, credentials and timeouts come from ``settings``; ``overrides`` replace Faust options.
    Creates ``<runtime.run_dir>/faust/`` for Faust's data directory."""
    servers = [f"kafka://{hp.strip()}" for hp in settings.kafka.bootstrap_servers.split(",")]
    run_dir = Path(settings.runtime.run_dir) / "faust" / app_id
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    conf: dict[str, Any] = {
        "broker": servers,
        "broker_credentials": broker_credentials(settings),
        "broker_session_timeout": settings.kafka.session_timeout_ms / 1000,
        "broker_heartbeat_interval": min(3.0, settings.kafka.session_timeout_ms / 3000),
        "broker_commit_interval": 1.0,
        "consumer_auto_offset_reset": "earliest",
        "key_serializer": "raw",
        "value_serializer": "raw",
        "topic_allow_declare": False,  # topics are created by streamrec with their settings
        "topic_disable_leader": True,
        "producer_acks": -1,
        "web_enabled": False,
        "store": "memory://",
        "datadir": str(run_dir),
        "stream_wait_empty": False,
        # Fetched-but-unprocessed records bound a busy worker's memory: run flat out over a
        # backlog it peaked at 154 MB with aiokafka's 1 MiB per partition, 122 MB with 256 KiB,
        # at the same speed. Kafka returns a record batch larger than this whole (fetch v3+),
        # so no message is ever too large to fetch (tests/integration/test_poison.py).
        "consumer_max_fetch_size": settings.stream.fetch_partition_bytes,
    }
    conf.update(overrides)
    app = faust.App(app_id, **conf)
    from streaming.ingest.agent import register_ingest

    register_ingest(app, settings, define_topics(app, settings), metrics or IngestMetrics())
    return app
