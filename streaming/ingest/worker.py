"""Running the stream-processing worker (``streamrec worker``)."""

from __future__ import annotations

import logging

import faust

from streaming.ingest.app import create_app
from streaming.io.kafka import KafkaAdmin, topic_specs
from streaming.ops.memory import start_trimmer
from streaming.ops.metrics import IngestMetrics, serve_configured
from streaming.settings import Settings


def run_worker(settings: Settings) -> int:
    """Run one Faust worker until SIGINT/SIGTERM (Faust installs the handlers)."""
    KafkaAdmin(settings).ensure_topics(topic_specs(settings))
    trimmer = start_trimmer(settings.runtime.malloc_trim_interval_s)
    metrics = IngestMetrics()
    server = serve_configured(metrics.registry, settings.runtime)
    app = create_app(settings, metrics=metrics)
    level = settings.runtime.log_level.upper()
    worker = faust.Worker(
        app,
        loglevel=level,
        quiet=True,
        redirect_stdouts=False,
        override_logging=False,
    )
    for name in ("faust", "aiokafka", "mode"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        if server is not None:
            server.close()
        if trimmer is not None:
            trimmer.set()
    return 0
