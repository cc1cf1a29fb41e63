"""Shared fixtures: real Kafka + Redis for integration tests, and a leak guard for every test.

Backends (``STREAMREC_TEST_BACKEND``):

- ``local`` (default without Docker): the project's own embedded runtime, Apache Kafka 4.x
  (``runtime.broker=kafka``, KRaft, in a temporary data directory) + redis-server.
- ``containers``: testcontainers' Kafka and Redis (needs a Docker engine).
- ``external``: ``KAFKA_BOOTSTRAP_SERVERS`` and ``REDIS_URL`` from the environment.
- ``auto`` (default): external if both variables are set, else containers if a Docker engine
  answers, else local.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streaming.io.kafka import KafkaAdmin, topic_specs
from streaming.settings import Settings


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found.update(int(c) for c in (task / "children").read_text().split())
    return found


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail a test that leaves Python threads, child processes or environment changes behind.

    Session-scoped fixtures are set up before this one, so their services are in the baseline.
    """
    threads = set(threading.enumerate())
    children = _children(os.getpid())
    env = dict(os.environ)
    yield
    deadline = time.monotonic() + 3.0
    while True:
        extra_threads = [t for t in threading.enumerate() if t not in threads and t.is_alive()]
        extra_children = _children(os.getpid()) - children
        if not (extra_threads or extra_children) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    changed = {k for k in set(env) | set(os.environ)
               if env.get(k) != os.environ.get(k) and k != "PYTEST_CURRENT_TEST"}
    problems = []
    if extra_threads:
        problems.append(f"threads left running: {[t.name for t in extra_threads]}")
    if extra_children:
        problems.append(f"child processes left running: {sorted(extra_children)}")
    if changed:
        problems.append(f"environment variables changed: {sorted(changed)}")
    if problems:
        pytest.fail("; ".join(problems))


def _docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _backend() -> str:
    choice = os.environ.get("STREAMREC_TEST_BACKEND", "auto")
    if choice != "auto":
        return choice
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") and os.environ.get("REDIS_URL"):
        return "external"
    return "containers" if _docker_available() else "local"


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings whose Kafka and Redis endpoints are real and running for the whole session."""
    backend = _backend()
    base = Settings.load(env={})
    run_dir = tmp_path_factory.mktemp("runtime")
    if backend == "external":
        yield base.with_values({
            "kafka.bootstrap_servers": os.environ["KAFKA_BOOTSTRAP_SERVERS"],
            "redis.url": os.environ["REDIS_URL"],
            "runtime.run_dir": str(run_dir),
        })
    elif backend == "containers":
        from testcontainers.kafka import KafkaContainer
        from testcontainers.redis import RedisContainer

        with KafkaContainer().with_kraft() as kafka, RedisContainer() as redis_c:
            host = redis_c.get_container_host_ip()
            port = redis_c.get_exposed_port(6379)
            yield base.with_values({
                "kafka.bootstrap_servers": kafka.get_bootstrap_server(),
                "redis.url": f"redis://{host}:{port}/0",
                "runtime.run_dir": str(run_dir),
            })
    elif backend == "local":
        from deploy.embedded import EmbeddedRuntime

        settings = base.with_values({"runtime.run_dir": str(run_dir), "runtime.broker": "kafka",
                                     "runtime.data_dir": str(run_dir / "data")})
        # Started here, in the main thread: the broker's JVM dies with the thread that forked it.
        with EmbeddedRuntime(settings, run_dir=run_dir / "services") as runtime:
            yield runtime.settings
    else:
        raise pytest.UsageError(f"STREAMREC_TEST_BACKEND={backend!r}: local|containers|external")


@pytest.fixture
def stack(services: Settings, tmp_path: Path) -> Settings:
    """Per-test settings on the shared services: fresh topic names and a fresh Redis prefix,
    with the topics created, so tests never see each other's data."""
    return make_stack(services, tmp_path)


def make_stack(services: Settings, tmp_path: Path) -> Settings:
    tag = uuid.uuid4().hex[:8]
    tmp_path = tmp_path / tag
    settings = services.with_values({
        "topics.events": f"events-{tag}",
        "topics.dlq": f"events.dlq-{tag}",
        "topics.examples": f"training-examples-{tag}",
        "topics.model_updates": f"model-updates-{tag}",
        "redis.key_prefix": f"t{tag}:",
        "runtime.run_dir": str(tmp_path / "run"),
        "trainer.checkpoint_dir": str(tmp_path / "checkpoints"),
    })
    KafkaAdmin(settings).ensure_topics(topic_specs(settings))
    return settings


@pytest.fixture
def redis_client(services: Settings) -> Iterator[object]:
    from streaming.io.redis_client import connect

    client = connect(services.redis)
    yield client
    client.close()
