"""Helpers shared by the benchmarks (not imported by library code)."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from deploy.embedded import EmbeddedRuntime
from streaming.io.kafka import KafkaAdmin, topic_specs
from streaming.ops import health
from streaming.ops.lag_monitor import LagCollector
from streaming.ops.process import ManagedProcess, component_env, terminate
from streaming.settings import Settings

RESULTS = Path(__file__).parent / "results"


def bench_settings(settings: Settings, name: str) -> Settings:
    """A benchmark measures from empty, and leaves ``streamrec up``'s data alone: unless
    ``runtime.data_dir`` is set, its embedded services keep their data in
    ``<run_dir>/bench/<name>``, emptied first (``runtime.fresh``)."""
    if settings.runtime.data_dir:
        return settings
    return settings.with_values({"runtime.data_dir": str(settings.runtime.run_path / "bench" / name),
                                 "runtime.fresh": "true"})


@contextlib.contextmanager
def services(settings: Settings, name: str = "services") -> Iterator[Settings]:
    """Embedded Kafka + Redis unless KAFKA_BOOTSTRAP_SERVERS / REDIS_URL point elsewhere
    (data in the benchmark's own directory, see :func:`bench_settings`)."""
    with EmbeddedRuntime(bench_settings(settings, name)) as runtime:
        yield runtime.settings


def fresh_topics(settings: Settings, **overrides: str) -> Settings:
    tag = uuid.uuid4().hex[:8]
    s = settings.with_values({
        "topics.events": f"bench-events-{tag}", "topics.dlq": f"bench-dlq-{tag}",
        "topics.examples": f"bench-examples-{tag}", "topics.model_updates": f"bench-mu-{tag}",
        "redis.key_prefix": f"b{tag}:", **overrides,
    })
    KafkaAdmin(s).ensure_topics(topic_specs(s))
    return s


def spawn(settings: Settings, args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = component_env(settings)
    return subprocess.Popen([sys.executable, *args], env=env, stdout=log.open("ab"),
                            stderr=subprocess.STDOUT)


def wait_consuming(client: Any, settings: Settings, procs: Iterable[ManagedProcess | None],
                   timeout_s: float = 180.0) -> None:
    """Wait until the ingest worker, the trainer and the scorer all report consuming (their
    heartbeats in Redis); raises if one of ``procs`` exits or after ``timeout_s``."""
    procs = list(procs)
    deadline = time.monotonic() + timeout_s
    while not {"ingest", "trainer", "scorer"} <= health.consuming(
            health.parse(client.hgetall(health.key(settings.redis.key_prefix))),
            int(time.time() * 1000)):
        for proc in procs:
            if proc is not None:
                proc.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"components not consuming after {timeout_s:g} s")
        time.sleep(0.5)


def group_lag(collector: LagCollector) -> dict[str, int]:
    """Each consumer group's lag summed over its partitions (no message ages: the benchmarks
    do not need them, and each costs a fetch). Raises :class:`BrokerError`."""
    lag: dict[str, int] = {}
    for part in collector.collect(ages=False):
        lag[part.group] = lag.get(part.group, 0) + part.lag
    return lag


def stop(proc: subprocess.Popen[bytes]) -> None:
    terminate(proc, 20)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    idx = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[idx]


def report(name: str, result: dict[str, Any]) -> None:
    result = {"name": name, **result, "machine": {
        "cpus": os.cpu_count(), "python": platform.python_version(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    print(orjson.dumps(result).decode(), flush=True)
