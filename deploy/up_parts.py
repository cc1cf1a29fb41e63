"""The parts ``streamrec up`` (:mod:`deploy.up`) is made of: its options, the component
processes, the event source, the arrival monitor, readiness, the status line and the summary."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import confluent_kafka

from deploy.dashboard import Dashboard
from deploy.embedded import EmbeddedRuntime
from deploy.supervisor import RestartPolicy, Supervisor
from models.checkpoint import list_versions, read_manifest, version_dir
from streaming.contract.names import GROUP_UP_MONITOR, Keys
from streaming.errors import BrokerError, StreamrecError
from streaming.ingest.state_store import read_stats
from streaming.io.kafka import TopicReport, client_config
from streaming.io.producer import EventProducer
from streaming.ops import health
from streaming.ops.lag_monitor import LagCollector
from streaming.ops.metrics import MetricsServer, SupervisorMetrics, serve
from streaming.ops.process import ManagedProcess, component_process, free_port
from streaming.settings import Settings
from streaming.sources.emit import EmitReport, emit_records
from streaming.sources.files import read_records
from streaming.sources.synthetic import SyntheticStream

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class UpOptions:
    """What ``streamrec up`` runs: the source, its rate and length, how many workers."""
    duration_s: float | None = None  # None = until stopped
    rate: float = 200.0  # events/s from the source
    ready_timeout_s: float = 180.0  # for the components to start and join their groups
    replay: Path | None = None  # replay this file instead of the synthetic generator
    seed: int = 0
    status_every_s: float = 5.0
    workers: int = 1  # stream-processing worker processes
    scorers: int = 1  # scorer processes
    trainer_ranks: int = 1  # trainer ranks (one process; torchrun when more)
    max_events: int | None = None  # the source stops after this many (the loop keeps running)
    dashboard: bool = True  # serve the dashboard (runtime.dashboard_port) from this process
    # Count the run (duration, counters, freshness) from the first model a scorer serves.
    wait_for_model: bool = False


class ArrivalMonitor:
    """Counts messages arriving on a topic after the moment it was created.

    Assigns every partition at its current end offset (read before the source starts), rather
    than subscribing with ``auto.offset.reset=latest``, which resolves the end only after the
    group join and misses what is produced meanwhile.
    """

    def __init__(self, settings: Settings, topic: str) -> None:
        conf = client_config(settings.kafka, **{
            "group.id": GROUP_UP_MONITOR,
            "enable.auto.commit": False,
        })
        self._consumer = confluent_kafka.Consumer(conf)
        md = self._consumer.list_topics(topic, timeout=10)
        start = []
        for p in md.topics[topic].partitions:
            tp = confluent_kafka.TopicPartition(topic, p)
            _, high = self._consumer.get_watermark_offsets(tp, timeout=10)
            start.append(confluent_kafka.TopicPartition(topic, p, high))
        self._consumer.assign(start)
        self.count = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="arrival-monitor", daemon=True)

    def start(self) -> None:
        """Start counting in a background thread."""
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for msg in self._consumer.consume(1000, 0.2):
                if msg.error():
                    self.errors += 1
                else:
                    self.count += 1

    def stop(self) -> None:
        """Stop counting and close the consumer."""
        self._stop.set()
        self._thread.join()
        self._consumer.close()


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


def consumer_lag(settings: Settings) -> dict[str, int]:
    """Max lag (messages) over each consumer group's partitions (streaming.ops.lag_monitor)."""
    collector = LagCollector(settings)
    try:
        out: dict[str, int] = {}
        for p in collector.collect(ages=False):
            out[p.group] = max(out.get(p.group, 0), p.lag)
        return out
    except BrokerError as exc:
        log.warning("%s", exc)
        return {}
    finally:
        collector.close()


def _source(settings: Settings, opts: UpOptions) -> Iterable[tuple[str, Any]]:
    if opts.replay is not None:
        return read_records(opts.replay)  # replayed again, its events are duplicates: right
    stream = SyntheticStream(seed=opts.seed)
    # The generator numbers its events from 0 each run; on a durable broker and Redis the ids
    # of an earlier run are still in the de-duplication window, so each run tags its own.
    run_tag = f"{time.time_ns() // 1_000_000:x}"

    def events() -> Iterator[tuple[str, Any]]:
        for n, event in enumerate(stream.live(opts.rate)):
            yield f"synthetic:{n}", replace(event, event_id=f"{event.event_id}-{run_tag}")

    return events()


def say_services(settings: Settings, runtime: EmbeddedRuntime, report: TopicReport,
                 say: Callable[[str], None]) -> None:
    """The first lines of ``up``: which Kafka (Apache Kafka and its version, Tansu, or external)
    and Redis it runs on, where their data and this run's logs are."""
    broker = runtime.broker.describe() if runtime.broker else "external"
    say(f"kafka  {settings.kafka.bootstrap_servers}  ({broker})")
    say(f"topics created: {', '.join(report.created) or 'none'}; "
        f"existing: {', '.join(report.existing) or 'none'}")
    redis_note = f"append-only file in {runtime.redis_dir}" if runtime.redis_embedded else "external"
    say(f"redis  {settings.redis.url}  ({redis_note})")
    if runtime.durable:
        say(f"data   {runtime.data_dir}  (kept across runs; --set runtime.fresh=true starts empty)")
    say(f"logs   {runtime.run_dir}")


def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """Partition -> log-end offset of ``topic`` now."""
    consumer = confluent_kafka.Consumer(client_config(settings.kafka, **{
        "group.id": GROUP_UP_MONITOR, "enable.auto.commit": False}))
    try:
        md = consumer.list_topics(topic, timeout=10)
        return {p: consumer.get_watermark_offsets(confluent_kafka.TopicPartition(topic, p),
                                                  timeout=10)[1]
                for p in md.topics[topic].partitions}
    finally:
        consumer.close()


def ingest_caught_up(redis_client: Any, settings: Settings, ends: dict[int, int]) -> bool:
    """Whether the ingest workers applied every event before ``ends`` (partition -> offset):
    their exactly-once watermarks in Redis (last applied offset) reached ``end - 1``."""
    keys = Keys(settings.redis.key_prefix)
    parts = [p for p, end in ends.items() if end > 0]
    if not parts:
        return True
    applied = redis_client.mget([keys.applied_offset(settings.topics.events, p) for p in parts])
    return all(a is not None and int(a) >= ends[p] - 1 for p, a in zip(parts, applied, strict=True))


def wait_consuming(client: Any, settings: Settings, runtime: EmbeddedRuntime,
                    components: tuple[str, ...], timeout_s: float, stop: threading.Event,
                    say: Callable[[str], None], check: Callable[[], None],
                    since_ms: int = 0) -> None:
    """Block until every component beats with partitions assigned (streaming.ops.health), so that
    the first events are not measured against process start-up and group joins. Only beats
    written since ``since_ms`` count: Redis keeps the beats of a run stopped seconds ago, which
    would pass for components still importing torch. ``check`` runs every 0.25 s meanwhile (the
    supervisor's poll)."""
    say(f"waiting for {', '.join(components)} to join their consumer groups ...")
    deadline = time.monotonic() + timeout_s
    missing = set(components)
    while missing and not stop.is_set():
        check()
        beats = health.parse(client.hgetall(health.key(settings.redis.key_prefix)))
        missing = set(components) - health.consuming(beats, int(time.time() * 1000),
                                                     since_ms=since_ms)
        if missing and time.monotonic() > deadline:
            raise StreamrecError(f"{', '.join(sorted(missing))} not consuming after "
                                 f"{timeout_s:g} s; see the logs in {runtime.run_dir}")
        stop.wait(0.25)


def wait_for_model(client: Any, settings: Settings, timeout_s: float, stop: threading.Event,
                   check: Callable[[], None], say: Callable[[str], None]) -> int | None:
    """Block until a scorer serves a model (the trainer's first publish, then its hot-load);
    returns its version (None when stopped). Raises :class:`StreamrecError` after
    ``timeout_s`` plus one publish interval."""
    say("waiting for the first model to be served ...")
    deadline = time.monotonic() + timeout_s + settings.trainer.publish_interval_s
    key = Keys(settings.redis.key_prefix).scorer_stats
    while not stop.is_set():
        check()
        version = client.hget(key, "model_version")
        if version is not None:
            say(f"model v{int(version)} served; measuring from now")
            return int(version)
        if time.monotonic() > deadline:
            raise StreamrecError("no model served after "
                                 f"{timeout_s + settings.trainer.publish_interval_s:g} s")
        stop.wait(0.25)
    return None


def start_dashboard(settings: Settings, metrics_urls: dict[str, str],
                     say: Callable[[str], None]) -> Dashboard | None:
    """The dashboard on ``runtime.dashboard_port``, or a free port when that one is taken."""
    for port in (settings.runtime.dashboard_port, 0):
        try:
            dashboard = Dashboard(settings, lambda: metrics_urls, port=port).start()
        except OSError as exc:
            say(f"dashboard port {port} unavailable ({exc}); trying a free port")
            continue
        say(f"dashboard {dashboard.url}")
        return dashboard
    return None




def start_components(settings: Settings, runtime: EmbeddedRuntime, opts: UpOptions
                     ) -> tuple[dict[str, str], list[ManagedProcess]]:
    """Start the workers, the trainer and the scorers as child processes (stopped with the
    runtime, before the broker), each with its own metrics port; returns name -> metrics URL
    and the processes."""
    components = [(f"worker-{n}", ["worker"]) for n in range(opts.workers)]
    components += [("trainer", ["train"] if opts.trainer_ranks == 1 else
                    ["train", "--nproc", str(opts.trainer_ranks)])]
    components += [(f"scorer-{n}", ["score"]) for n in range(opts.scorers)]
    host = settings.runtime.bind_host
    metrics_urls: dict[str, str] = {}
    procs: list[ManagedProcess] = []
    for name, args in components:
        port = free_port(host)
        metrics_urls[name] = f"http://{host}:{port}/metrics"
        proc = component_process(settings.with_values({"runtime.metrics_port": str(port)}),
                                 runtime.run_dir, name, *args)
        proc.start()
        runtime.processes.append(proc)
        procs.append(proc)
    return metrics_urls, procs


@dataclass
class Supervision:
    """The run's :class:`~deploy.supervisor.Supervisor` and its ``/metrics`` endpoint (listed in
    the metrics URLs as ``supervisor``, so the dashboard charts restarts)."""

    supervisor: Supervisor
    server: MetricsServer
    runtime: EmbeddedRuntime
    components: list[ManagedProcess]

    @classmethod
    def start(cls, settings: Settings, runtime: EmbeddedRuntime, components: list[ManagedProcess],
              metrics_urls: dict[str, str], say: Callable[[str], None]) -> Supervision:
        """Supervise ``components``; adds the supervisor's URL to ``metrics_urls``."""
        metrics = SupervisorMetrics()
        server = serve(metrics.registry, 0, settings.runtime.bind_host)
        metrics_urls["supervisor"] = f"http://{settings.runtime.bind_host}:{server.port}/metrics"
        policy = RestartPolicy.from_settings(settings.runtime)
        return cls(Supervisor(components, policy, metrics, say), server, runtime, components)

    def check(self) -> None:
        """Raise if an embedded service died; restart components that exited (see
        :meth:`Supervisor.poll`, which raises for a crash loop)."""
        for proc in self.runtime.processes:
            if proc not in self.components:
                proc.check_alive()
        self.supervisor.poll()

    def close(self) -> None:
        """Stop serving the supervisor's metrics."""
        self.server.close()


@dataclass
class EventSource:
    """The run's events (synthetic or a replay) sent by a background thread at ``opts.rate``."""

    settings: Settings
    opts: UpOptions
    producer: EventProducer = field(init=False)
    _stop: threading.Event = field(init=False, default_factory=threading.Event)
    _result: dict[str, EmitReport] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.producer = EventProducer(self.settings)
        self._thread = threading.Thread(target=self._run, name="event-source", daemon=True)

    def _run(self) -> None:
        self._result["report"] = emit_records(
            self.producer, _source(self.settings, self.opts), rate=self.opts.rate,
            stop=self._stop, limit=self.opts.max_events,
            on_invalid=lambda m: log.warning("invalid input: %s", m))

    def start(self) -> None:
        """Start sending."""
        self._thread.start()

    def alive(self) -> bool:
        """Still sending."""
        return self._thread.is_alive()

    def stop(self) -> EmitReport:
        """Stop, wait for every delivery, and return what was emitted."""
        self._stop.set()
        self._thread.join()
        self.producer.flush(30)
        return self._result.get("report", EmitReport())


#: Levels, not counters: never reported relative to a baseline.
_LEVELS = frozenset({"scorer_model_version"})


def pipeline_stats(redis_client: Any, settings: Settings,
                   baseline: dict[str, int] | None = None) -> dict[str, int]:
    """Processor counters over every partition plus the scorer's (``scorer_*``); with a
    ``baseline`` (an earlier call), the counters' increase since then."""
    out = read_stats(redis_client, settings.redis.key_prefix,
                     range(settings.topics.events_partitions))
    scorer = redis_client.hgetall(Keys(settings.redis.key_prefix).scorer_stats)
    out.update({f"scorer_{k.decode()}": int(v) for k, v in scorer.items()})
    if baseline:
        out = {k: v if k in _LEVELS else v - baseline.get(k, 0) for k, v in out.items()}
    return out


def status_line(elapsed_s: float, sent: int, arrived: int, rate: float, st: dict[str, int]) -> str:
    """The periodic status line."""
    return (f"[{elapsed_s:6.1f}s] emitted {sent:>8}  arrived {arrived:>8} ({rate:.0f}/s)  "
            f"processed {st.get('processed', 0):>8}  dlq {st.get('invalid', 0):>5}  "
            f"examples {st.get('examples', 0):>7}  model v{st.get('scorer_model_version', '-')}  "
            f"feeds {st.get('scorer_feeds_written', 0):>7}")


def summary(settings: Settings, st: dict[str, int], emitted: EmitReport, delivered: int,
            arrived: int, fresh_ms: list[float], duration_s: float,
            baseline: dict[str, int] | None = None,
            restarts: dict[str, int] | None = None) -> dict[str, Any]:
    """The final JSON summary of a run; ``st``'s counters count from ``baseline`` (the stats
    when the run's source started: Redis keeps them across runs); ``restarts`` per component
    (the supervisor's)."""
    if baseline:
        st = {k: v if k in _LEVELS else v - baseline.get(k, 0) for k, v in st.items()}
    root = Path(settings.trainer.checkpoint_dir)
    checkpoints = list_versions(root)
    train_steps = read_manifest(version_dir(root, checkpoints[-1])).step if checkpoints else 0
    lag = consumer_lag(settings)
    return {
        "emitted": emitted.emitted,
        "invalid_input": emitted.invalid,
        "delivered": delivered,
        "arrived": arrived,
        "processed": st.get("processed", 0),
        "dead_lettered": st.get("invalid", 0),
        "duplicates": st.get("duplicate", 0),
        "examples": st.get("examples", 0),
        "train_steps": train_steps,
        "checkpoints": len(checkpoints),
        "model_version": st.get("scorer_model_version"),
        "feeds_written": st.get("scorer_feeds_written", 0),
        "feeds_by_model": st.get("scorer_feeds_by_model", 0),
        "freshness_ms": {"p50": _pct(fresh_ms, 50), "p99": _pct(fresh_ms, 99), "n": len(fresh_ms)},
        "lag_max": max(lag.values(), default=0),
        "lag": lag,
        "restarts": restarts or {},
        "duration_s": round(duration_s, 2),
    }
