"""An embedded single-node Apache Kafka 4.x broker (KRaft, combined broker + controller).

The jars come from Maven Central through ``deploy/kafka/pom.xml`` (``ensure_kafka_jars``: one
``mvn dependency:copy-dependencies`` into a cache directory, offline and instant afterwards), and
the broker runs as ``java -cp '<lib>/*' kafka.Kafka server.properties`` bound to 127.0.0.1 only.

Unlike the in-memory Tansu broker, this one is durable: the data directory holds the KRaft
metadata log, the topic logs and the committed offsets, and a ``KafkaBroker`` started again on the
same data directory reuses its cluster id and, when they are still free, its ports, so topics,
messages, committed offsets and the bootstrap address all survive a restart::

    with KafkaBroker(Path(".streamrec/kafka")) as broker:
        producer = confluent_kafka.Producer({"bootstrap.servers": broker.bootstrap_servers})

The JVM is started in its own session with ``PR_SET_PDEATHSIG=SIGTERM``: it stops (cleanly) when
the thread that started it exits, so start brokers from the main thread or a thread that lives
as long as the broker should.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from streaming.errors import EmbeddedServiceError
from streaming.ops.process import die_with_parent

log = logging.getLogger(__name__)

#: The Apache Kafka release the embedded broker runs (``org.apache.kafka:kafka_2.13`` on Maven
#: Central). The pom takes it as ``-Dkafka.version``; this is the only place it is written.
KAFKA_VERSION = "4.4.0"

#: Kafka 4.x runs on Java 17 or newer (brokers and tools).
MIN_JAVA = 17

POM = Path(__file__).resolve().parent / "kafka" / "pom.xml"

#: The node id of the single broker + controller.
NODE_ID = 1

#: JVM flags besides the heap. Measured on 2 cores: SerialGC and C1 only (TieredStopAtLevel=1)
#: start the broker faster and keep it smaller and quieter than the default G1 + C2. C2 was
#: tried again under the whole loop's load (``streamrec bench resources``): 0.23-0.28 broker
#: cores against 0.27-0.44, but ``streamrec bench ingest``'s feature-visible p50 at 1,000
#: events/s was 2.5 s in both runs with it against 0.28-0.44 s with C1, so C1 stays.
DEFAULT_JVM_OPTIONS: tuple[str, ...] = (
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-Xss512k",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)

_STATE_FILE = "streamrec-kafka.json"
_STAMP_FILE = ".complete"
_ARCHIVE = "kafka.jsa"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/streamrec`` (``~/.cache/streamrec``): where the Kafka jars are kept."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "streamrec"


# --------------------------------------------------------------------------------------------
# jars


def _tail(text: str, lines: int = 25) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)  # Debian's Maven colours even with -B
    return "\n".join(text.strip().splitlines()[-lines:])


def _ensure_tools() -> tuple[str, str]:
    """Paths of ``java`` and ``mvn``; installs Debian's packages when run as root."""
    java, mvn = shutil.which("java"), shutil.which("mvn")
    if java and mvn:
        return java, mvn
    missing = [name for name, path in (("java", java), ("mvn", mvn)) if not path]
    if os.geteuid() != 0:
        raise EmbeddedServiceError(
            f"the embedded Kafka needs {' and '.join(missing)} on PATH: install a Java {MIN_JAVA}+ "
            "runtime and Maven (Debian/Ubuntu: apt-get install -y default-jre-headless maven)"
        )
    log.info("installing %s for the embedded Kafka (apt-get)", " and ".join(missing))
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "default-jre-headless", "maven"]
    try:
        done = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:  # a fresh machine often has no package lists yet
            subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=False)
            done = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise EmbeddedServiceError(f"cannot install java/maven: {exc}") from None
    java, mvn = shutil.which("java"), shutil.which("mvn")
    if done.returncode != 0 or not (java and mvn):
        raise EmbeddedServiceError(
            "apt-get install -y default-jre-headless maven failed; install a Java "
            f"{MIN_JAVA}+ runtime and Maven by hand:\n{_tail(done.stdout + done.stderr)}"
        )
    return java, mvn


def _check_java(java: str) -> None:
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60).stderr
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EmbeddedServiceError(f"{java} -version failed: {exc}") from None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if match:
        major = int(match.group(1))
        if major == 1 and match.group(2):  # "1.8.0_392"
            major = int(match.group(2))
        if major < MIN_JAVA:
            raise EmbeddedServiceError(
                f"Kafka {KAFKA_VERSION} needs Java {MIN_JAVA}+, but {java} is Java {major}"
            )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_kafka_jars(cache_dir: Path | None = None) -> Path:
    """The directory of the Kafka broker's jars, ``<cache_dir>/kafka-<version>/lib``.

    The first call runs Maven (``dependency:copy-dependencies`` of ``deploy/kafka/pom.xml``,
    which also fills ``~/.m2``) and marks success with a stamp holding the pom's hash; later
    calls return at once. Concurrent callers wait for each other on a lock file.

    Raises:
        EmbeddedServiceError: java or mvn is missing (and cannot be installed), or Maven failed
            (the message ends with the tail of Maven's output).
    """
    home = Path(cache_dir or default_cache_dir()) / f"kafka-{KAFKA_VERSION}"
    lib, stamp = home / "lib", home / _STAMP_FILE
    fingerprint = hashlib.sha256(POM.read_bytes() + KAFKA_VERSION.encode()).hexdigest()
    if stamp.is_file() and stamp.read_text().strip() == fingerprint and lib.is_dir():
        return lib
    with _locked(home / ".lock"):
        if stamp.is_file() and stamp.read_text().strip() == fingerprint and lib.is_dir():
            return lib
        java, mvn = _ensure_tools()
        _check_java(java)
        partial = home / "lib.partial"
        shutil.rmtree(partial, ignore_errors=True)
        cmd = [
            mvn, "-B", "-q", "-Dstyle.color=never", "-f", str(POM), f"-Dkafka.version={KAFKA_VERSION}",
            "dependency:copy-dependencies", f"-DoutputDirectory={partial}",
        ]
        log.info("fetching the Kafka %s jars with Maven into %s", KAFKA_VERSION, lib)
        started = time.monotonic()
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise EmbeddedServiceError(f"maven could not fetch the Kafka jars: {exc}") from None
        if done.returncode != 0 or not any(partial.glob(f"kafka_2.13-{KAFKA_VERSION}.jar")):
            raise EmbeddedServiceError(
                f"maven could not fetch the Kafka {KAFKA_VERSION} jars (exit {done.returncode}; "
                f"{' '.join(cmd)}):\n{_tail(done.stdout + done.stderr)}"
            )
        shutil.rmtree(lib, ignore_errors=True)
        (home / _ARCHIVE).unlink(missing_ok=True)  # class data of the old jars
        partial.rename(lib)
        stamp.write_text(fingerprint + "\n")
        log.info("Kafka jars ready in %.1f s", time.monotonic() - started)
    return lib


# --------------------------------------------------------------------------------------------
# broker


def _port(preferred: int | None, taken: set[int]) -> int:
    """``preferred`` if it can be bound on 127.0.0.1 now, else a port the OS picks.

    SO_REUSEADDR as the JVM sets it: connections of a previous run in TIME_WAIT don't count.
    """
    candidates = [preferred] if preferred and preferred not in taken else []
    while True:
        candidate = candidates.pop() if candidates else 0
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            port = int(s.getsockname()[1])
        if port not in taken:
            return port


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding (Kafka's ``Uuid``)."""
    while True:
        cid = base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()
        if not cid.startswith("-"):  # Kafka's own generator avoids these (they look like flags)
            return cid


class KafkaBroker:
    """A single-node Kafka (KRaft broker + controller) on 127.0.0.1, durable in ``data_dir``.

    Args:
        data_dir: holds ``server.properties``, the topic and metadata logs (``data/``), the
            broker's log (``server.log``, JVM output in ``kafka.out``) and a small state file
            with the cluster id and the ports. Reusing it keeps topics and offsets.
        cache_dir: where the jars are kept (``default_cache_dir()`` if None).
        heap_mb: the JVM's maximum heap (``-Xmx``); ``-Xms`` is the smaller of this and 256.
        start_timeout_s: how long ``start()`` waits for the broker to answer metadata requests.
        stop_timeout_s: how long ``stop()`` waits after SIGTERM before SIGKILL.
        jvm_options: JVM flags besides the heap (``DEFAULT_JVM_OPTIONS`` if None).
        class_data_sharing: start from an AppCDS archive of Kafka's classes kept next to the
            jars (the first broker to stop cleanly writes it): measured on 2 cores, the broker
            is healthy ~1.3 s sooner, uses ~1.2 s less CPU to get there and ~35 MB less RSS.
        overrides: extra ``server.properties`` entries, applied last.
    """

    def __init__(self, data_dir: Path, *, cache_dir: Path | None = None, heap_mb: int = 512,
                 start_timeout_s: float = 90.0, stop_timeout_s: float = 30.0,
                 jvm_options: Sequence[str] | None = None, class_data_sharing: bool = True,
                 overrides: dict[str, str] | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.cache_dir = cache_dir
        self.heap_mb = heap_mb
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.jvm_options = tuple(DEFAULT_JVM_OPTIONS if jvm_options is None else jvm_options)
        self.class_data_sharing = class_data_sharing
        self.overrides = dict(overrides or {})
        self._dumping: tuple[Path, Path] | None = None  # (archive being written, its final name)
        self._marks: dict[Path, int] = {}  # log sizes when the JVM was launched
        self._proc: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None
        self._state: dict[str, Any] = self._read_state()

    # -- public surface ----------------------------------------------------------------------

    @property
    def version(self) -> str:
        """The Kafka release this broker runs."""
        return KAFKA_VERSION

    @property
    def cluster_id(self) -> str:
        """The KRaft cluster id (generated on the first start, kept in ``data_dir``)."""
        cid = self._state.get("cluster_id")
        if not cid:
            raise EmbeddedServiceError(f"the Kafka in {self.data_dir} has never been started")
        return str(cid)

    @property
    def bootstrap_servers(self) -> str:
        """``127.0.0.1:<port>`` of the PLAINTEXT listener while the broker runs."""
        if not self.running:
            raise EmbeddedServiceError("the embedded Kafka is not running")
        return f"127.0.0.1:{self._state['broker_port']}"

    @property
    def pid(self) -> int | None:
        """The JVM's pid while it runs."""
        return self._proc.pid if self.running and self._proc else None

    @property
    def running(self) -> bool:
        """True while the JVM started by ``start()`` is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path:
        """The broker's log4j log."""
        return self.data_dir / "server.log"

    def start(self) -> KafkaBroker:
        """Fetch the jars if needed, format the storage on the first start, run the broker and
        wait until it answers a metadata request that lists itself.

        Raises:
            EmbeddedServiceError: the jars, the format step or the broker failed, or the broker
                was not healthy within ``start_timeout_s`` (the message ends with its log tail).
        """
        if self.running:
            return self
        lib = ensure_kafka_jars(self.cache_dir)
        java = shutil.which("java") or "java"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(2):
            self._choose_ports()
            config = self._write_config()
            self._format(java, lib, config)
            try:
                self._launch(java, lib, config)
                self._wait_healthy()
                return self
            except EmbeddedServiceError as exc:
                self.stop()
                if attempt == 0 and "Address already in use" in str(exc):
                    log.warning("a Kafka port was taken meanwhile; retrying on new ports")
                    self._state.pop("broker_port", None)
                    self._state.pop("controller_port", None)
                    continue
                raise
        raise AssertionError("unreachable")

    def stop(self) -> int | None:
        """SIGTERM (a controlled shutdown that flushes the logs), wait up to ``stop_timeout_s``,
        then SIGKILL. Returns the JVM's exit code (None if it was not started)."""
        proc, self._proc = self._proc, None
        code: int | None = None
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(self.stop_timeout_s)
                except subprocess.TimeoutExpired:
                    log.warning("Kafka did not stop within %.0f s; killing it", self.stop_timeout_s)
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    proc.wait()
            code = proc.returncode
        if self._dumping is not None:
            pending, archive = self._dumping
            self._dumping = None
            # Only a JVM that exited normally (SIGTERM -> 143) has written a whole archive.
            if code in (0, 143) and pending.is_file() and pending.stat().st_size and not archive.exists():
                pending.replace(archive)
                log.info("wrote the class data archive %s", archive)
            pending.unlink(missing_ok=True)
        if self._out is not None:
            self._out.close()
            self._out = None
        return code

    def __enter__(self) -> KafkaBroker:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the JVM's output and of the broker's log, since the last launch."""
        parts = []
        for path in (self.data_dir / "kafka.out", self.log_path):
            with contextlib.suppress(OSError):
                with path.open("rb") as fh:
                    end = fh.seek(0, os.SEEK_END)
                    mark = self._marks.get(path, 0)
                    fh.seek(max(mark if mark <= end else 0, end - 64_000))  # rolled over: from 0
                    text = fh.read().decode(errors="replace")
                if text.strip():
                    parts.append(f"--- {path.name}\n{_tail(text, lines)}")
        return "\n".join(parts) or "(no output)"

    # -- internals ---------------------------------------------------------------------------

    def _read_state(self) -> dict[str, Any]:
        with contextlib.suppress(OSError, ValueError):
            state = json.loads((self.data_dir / _STATE_FILE).read_text())
            if isinstance(state, dict):
                return state
        return {}

    def _save_state(self) -> None:
        path = self.data_dir / _STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._state, indent=2, sort_keys=True) + "\n")
        tmp.replace(path)

    def _choose_ports(self) -> None:
        broker = _port(self._state.get("broker_port"), set())
        controller = _port(self._state.get("controller_port"), {broker})
        self._state.update(broker_port=broker, controller_port=controller)
        self._save_state()

    def _write_config(self) -> Path:
        port, cport = self._state["broker_port"], self._state["controller_port"]
        props = {
            "process.roles": "broker,controller",
            "node.id": str(NODE_ID),
            # A static single-voter quorum: the voter set lives in this file, not in the metadata
            # log (as a --standalone dynamic quorum's would), so the controller port may change
            # between restarts when the old one is taken.
            "controller.quorum.voters": f"{NODE_ID}@127.0.0.1:{cport}",
            "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.data_dir / "data"),
            # One replica of everything: a single node.
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            # Fewer internal partitions (default 50 each): quicker first group/transaction use.
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.num.partitions": "4",
            "num.partitions": "1",
            # Topics are created explicitly with the partition counts the project needs; a typo
            # or a stray metadata request must not create a 1-partition topic silently.
            "auto.create.topics.enable": "false",
            "group.initial.rebalance.delay.ms": "0",
            # After a kill -9 the restarted controller keeps the dead broker's registration until
            # its session expires, and the new broker cannot register before that (9 s by
            # default: a restart took ~13 s). Both live in this JVM, so heartbeats are cheap;
            # 3 s still rides out a 2.5 s stall of a busy 2-core machine.
            "broker.session.timeout.ms": "3000",
            "broker.heartbeat.interval.ms": "500",
            # Sized for a 2-core machine and a small heap (the cleaner's default is 128 MiB).
            "num.network.threads": "2",
            "num.io.threads": "4",
            "background.threads": "4",
            "num.recovery.threads.per.data.dir": "1",
            "log.cleaner.threads": "1",
            "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
            **self.overrides,
        }
        config = self.data_dir / "server.properties"
        config.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        log4j = self.data_dir / "log4j2.properties"
        log4j.write_text(_LOG4J2.format(log=self.log_path))
        return config

    def _format(self, java: str, lib: Path, config: Path) -> None:
        """``kafka-storage format`` on the first start; the cluster id is kept for restarts."""
        if (self.data_dir / "data" / "meta.properties").is_file():
            if not self._state.get("cluster_id"):  # state file lost: read the id back
                meta = (self.data_dir / "data" / "meta.properties").read_text()
                found = re.search(r"^cluster\.id=(\S+)", meta, re.MULTILINE)
                if found:
                    self._state["cluster_id"] = found.group(1)
                    self._save_state()
            return
        self._state.setdefault("cluster_id", new_cluster_id())
        self._state["formatted_by"] = KAFKA_VERSION
        self._save_state()
        cmd = [
            java, "-Xmx256m", *self.jvm_options, *self._use_archive(lib),
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            "-cp", str(lib / "*"), "kafka.tools.StorageTool", "format",
            "--config", str(config), "--cluster-id", self.cluster_id, "--ignore-formatted",
        ]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise EmbeddedServiceError(f"kafka-storage format failed: {exc}") from None
        if done.returncode != 0:
            raise EmbeddedServiceError(
                f"kafka-storage format failed (exit {done.returncode}):\n{_tail(done.stdout + done.stderr)}"
            )

    def _use_archive(self, lib: Path) -> list[str]:
        archive = lib.parent / _ARCHIVE
        return [f"-XX:SharedArchiveFile={archive}"] if self.class_data_sharing and archive.is_file() else []

    def _launch(self, java: str, lib: Path, config: Path) -> None:
        cds = self._use_archive(lib)
        if self.class_data_sharing and not cds:  # dump Kafka's classes when this JVM exits
            archive = lib.parent / _ARCHIVE
            pending = archive.with_name(f"{_ARCHIVE}.{os.getpid()}-{id(self)}.tmp")
            cds, self._dumping = [f"-XX:ArchiveClassesAtExit={pending}"], (pending, archive)
        cmd = [
            java, f"-Xms{min(256, self.heap_mb)}m", f"-Xmx{self.heap_mb}m", *self.jvm_options, *cds,
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.data_dir}",
            "-cp", str(lib / "*"), "kafka.Kafka", str(config),
        ]
        self._marks = {p: p.stat().st_size if p.exists() else 0
                       for p in (self.data_dir / "kafka.out", self.log_path)}
        self._out = (self.data_dir / "kafka.out").open("ab")
        self._out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
        self._out.flush()
        try:
            self._proc = subprocess.Popen(
                cmd, cwd=self.data_dir, stdin=subprocess.DEVNULL, stdout=self._out,
                # SIGTERM (a controlled shutdown) when the thread that started the broker
                # exits, even if its process is killed with SIGKILL.
                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent,
            )
        except OSError as exc:
            raise EmbeddedServiceError(f"cannot start Kafka ({java}): {exc}") from None

    def _wait_healthy(self) -> None:
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + self.start_timeout_s
        port = int(self._state["broker_port"])
        admin: AdminClient | None = None
        last = "no answer"
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                raise EmbeddedServiceError(
                    f"Kafka exited with code {code} while starting:\n{self.log_tail()}"
                )
            if admin is None:
                # Wait for the listener first: librdkafka would log every refused connection.
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
                except OSError:
                    time.sleep(0.1)
                    continue
                admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}",
                                     "socket.connection.setup.timeout.ms": 2000,
                                     "reconnect.backoff.ms": 50, "reconnect.backoff.max.ms": 250})
            try:
                md = admin.list_topics(timeout=2.0)
            except Exception as exc:  # KafkaException: not ready yet
                last = str(exc)
                time.sleep(0.1)
                continue
            if NODE_ID in md.brokers and md.cluster_id == self.cluster_id:
                log.info("Kafka %s up on 127.0.0.1:%s (pid %s, cluster %s)",
                         KAFKA_VERSION, port, self._proc.pid, self.cluster_id)
                return
            last = f"metadata without this broker: brokers={list(md.brokers)} cluster={md.cluster_id}"
            time.sleep(0.1)
        raise EmbeddedServiceError(
            f"Kafka was not healthy within {self.start_timeout_s:.0f} s ({last}):\n{self.log_tail()}"
        )


_LOG4J2 = """\
# Written by deploy/kafka_broker.py on every start.
status = warn
# Kafka's own shutdown hook logs the controlled shutdown: log4j must not stop before it.
shutdownHook = disable
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = {log}
appender.file.filePattern = {log}.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 20MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""
