"""Test-only helpers: reading topics back with a real consumer, running the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence

import confluent_kafka

from streaming.kafka import client_config
from streaming.settings import Settings


def consume_all(settings: Settings, topic: str, expected: int, timeout_s: float = 30.0) -> list:
    """Read ``topic`` from the beginning until ``expected`` messages arrived (or time out)."""
    consumer = confluent_kafka.Consumer(client_config(settings.kafka, **{
        "group.id": f"test-{uuid.uuid4().hex[:8]}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": settings.kafka.session_timeout_ms,
    }))
    # assign() instead of subscribe(): no group join, so no wait of half the session timeout.
    md = consumer.list_topics(topic, timeout=10)
    consumer.assign([confluent_kafka.TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING)
                     for p in md.topics[topic].partitions])
    out: list = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.5):
                assert msg.error() is None, msg.error()
                out.append(msg)
    finally:
        consumer.close()
    return out


def cli_env(settings: Settings) -> dict[str, str]:
    env = settings.child_env(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_cli(args: Sequence[str], env: dict[str, str], timeout_s: float = 120, stdin: bytes | None = None
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deploy.cli", *args], env=env, capture_output=True, text=True,
        timeout=timeout_s, input=stdin.decode() if stdin is not None else None,
    )
