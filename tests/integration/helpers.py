"""Test-only helpers: reading topics back with a real consumer, running the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import confluent_kafka

from streaming.io.kafka import client_config
from streaming.ops.process import terminate
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


def start_up(run_dir: Path, *args: str, ready_timeout_s: float = 180.0
             ) -> tuple[subprocess.Popen[str], list[str], Settings | None]:
    """``streamrec up`` on its own embedded stack (no endpoints inherited from the environment),
    returned once it prints ``ready:``: the process (stdout still open), the lines it printed,
    and settings for its broker and Redis (from ``current.json``; None if it has none)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("STREAMREC_") and k not in {"KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL"}}
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "deploy.cli", "up", "--run-dir", str(run_dir), *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("ready:"):
            try:
                info = json.loads((run_dir / "current.json").read_text())
            except (OSError, ValueError):
                return proc, lines, None
            return proc, lines, Settings.load(env={}).with_values({
                "kafka.bootstrap_servers": info["kafka_bootstrap_servers"],
                "redis.url": info["redis_url"]})
    proc.kill()
    proc.wait()
    proc.stdout.close()
    raise AssertionError("streamrec up did not become ready:\n" + "".join(lines))


def wait_for(what: str, check: Callable[[], Any], timeout_s: float,
             show: Callable[[], Any] | None = None) -> Any:
    """Poll ``check`` until truthy (returned) or ``timeout_s``; on a timeout the error names
    ``what`` and, with ``show``, what it returns then (the state that never got there)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    seen = f": {show()!r}" if show is not None else ""
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}{seen}")


def start_worker(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    """A real ``streamrec worker`` process with these settings, its output in ``log``."""
    return subprocess.Popen([sys.executable, "-m", "deploy.cli", "worker"], env=cli_env(settings),
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM, then SIGKILL after 30 s."""
    terminate(proc, 30)


@contextmanager
def running_worker(stack: Settings, tmp: Path
                   ) -> Iterator[tuple[Settings, subprocess.Popen[bytes], Path]]:
    """A ``streamrec worker`` on ``stack`` for the ``with`` block: ``(stack, process, log)``,
    the log in ``tmp/worker.log``; stopped afterwards."""
    log = tmp / "worker.log"
    proc = start_worker(stack, log)
    try:
        yield stack, proc, log
    finally:
        stop_process(proc)
