"""``streamrec up``: the whole loop on one machine.

Starts (or connects to) Kafka and Redis, creates the topics, runs an event source (synthetic
generator or file replay) and watches events arrive, until stopped or ``duration_s`` elapses.
Prints a status line every few seconds and, at the end, one JSON summary line.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import confluent_kafka

from deploy.dashboard import Dashboard
from deploy.embedded import EmbeddedRuntime, remove_endpoints, write_endpoints
from models.checkpoint import list_versions, read_manifest, version_dir
from streaming.contract.names import GROUP_UP_MONITOR, Keys
from streaming.errors import BrokerError, StreamrecError
from streaming.ingest.state_store import read_stats
from streaming.io.kafka import KafkaAdmin, client_config, topic_specs
from streaming.io.producer import EventProducer
from streaming.io.redis_client import connect
from streaming.ops import health
from streaming.ops.lag_monitor import LagCollector
from streaming.ops.process import component_process, free_port
from streaming.settings import Settings
from streaming.sources.emit import EmitReport, emit_records
from streaming.sources.files import read_records
from streaming.sources.synthetic import SyntheticStream

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class UpOptions:
    duration_s: float | None = None  # None = until stopped
    rate: float = 200.0  # events/s from the source
    ready_timeout_s: float = 180.0  # for the components to start and join their groups
    replay: Path | None = None  # replay this file instead of the synthetic generator
    seed: int = 0
    status_every_s: float = 5.0
    workers: int = 1  # stream-processing worker processes
    scorers: int = 1  # scorer processes
    max_events: int | None = None  # the source stops after this many (the loop keeps running)
    dashboard: bool = True  # serve the dashboard (runtime.dashboard_port) from this process


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
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for msg in self._consumer.consume(1000, 0.2):
                if msg.error():
                    self.errors += 1
                else:
                    self.count += 1

    def stop(self) -> None:
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
        for p in collector.collect():
            out[p.group] = max(out.get(p.group, 0), p.lag)
        return out
    except BrokerError as exc:
        log.warning("%s", exc)
        return {}
    finally:
        collector.close()


def _source(settings: Settings, opts: UpOptions) -> Iterable[tuple[str, Any]]:
    if opts.replay is not None:
        return read_records(opts.replay)
    stream = SyntheticStream(seed=opts.seed)

    def events() -> Iterator[tuple[str, Any]]:
        for n, event in enumerate(stream.live(opts.rate)):
            yield f"synthetic:{n}", event

    return events()


def _wait_consuming(client: Any, settings: Settings, runtime: EmbeddedRuntime,
                    components: tuple[str, ...], timeout_s: float, stop: threading.Event,
                    say: Callable[[str], None]) -> None:
    """Block until every component beats with partitions assigned (streaming.ops.health), so that
    the first events are not measured against process start-up and group joins."""
    say(f"waiting for {', '.join(components)} to join their consumer groups ...")
    deadline = time.monotonic() + timeout_s
    missing = set(components)
    while missing and not stop.is_set():
        runtime.check_alive()
        beats = health.parse(client.hgetall(health.key(settings.redis.key_prefix)))
        missing = set(components) - health.consuming(beats, int(time.time() * 1000))
        if missing and time.monotonic() > deadline:
            raise StreamrecError(f"{', '.join(sorted(missing))} not consuming after "
                                 f"{timeout_s:g} s; see the logs in {runtime.run_dir}")
        stop.wait(0.25)


def _start_dashboard(settings: Settings, metrics_urls: dict[str, str],
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


def run_up(
    settings: Settings,
    opts: UpOptions,
    stop: threading.Event,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run until ``stop`` is set or the duration elapses; returns the summary dict."""
    runtime = EmbeddedRuntime(settings)
    settings = runtime.start()
    dashboard: Dashboard | None = None
    try:
        report = KafkaAdmin(settings).ensure_topics(topic_specs(settings))
        say(f"kafka  {settings.kafka.bootstrap_servers}  "
            f"(topics created: {report.created or 'none'}, existing: {report.existing or 'none'})")
        say(f"redis  {settings.redis.url}")
        say(f"logs   {runtime.run_dir}")

        components = [(f"worker-{n}", ["worker"]) for n in range(opts.workers)]
        components += [("trainer", ["train"])]
        components += [(f"scorer-{n}", ["score"]) for n in range(opts.scorers)]
        host = settings.runtime.bind_host
        metrics_urls: dict[str, str] = {}
        for name, args in components:
            port = free_port(host)
            metrics_urls[name] = f"http://{host}:{port}/metrics"
            proc = component_process(settings.with_values({"runtime.metrics_port": str(port)}),
                              runtime.run_dir, name, *args)
            proc.start()
            runtime.processes.append(proc)  # stopped (before the broker) with the runtime
        if opts.dashboard:
            dashboard = _start_dashboard(settings, metrics_urls, say)
        # Other subcommands (emit, feed, lag, dashboard) find this run through this file.
        write_endpoints(settings, runtime.run_dir, metrics=metrics_urls,
                        dashboard=dashboard.url if dashboard else None)
        redis_client = connect(settings.redis)
        partitions = range(settings.topics.events_partitions)
        _wait_consuming(redis_client, settings, runtime, ("ingest", "scorer", "trainer"),
                        opts.ready_timeout_s, stop, say)
        started = time.monotonic()  # the run's duration counts from the first event

        def stats() -> dict[str, int]:
            out = read_stats(redis_client, settings.redis.key_prefix, partitions)
            scorer = redis_client.hgetall(Keys(settings.redis.key_prefix).scorer_stats)
            out.update({f"scorer_{k.decode()}": int(v) for k, v in scorer.items()})
            return out

        monitor = ArrivalMonitor(settings, settings.topics.events)
        monitor.start()

        producer = EventProducer(settings)
        stop_source = threading.Event()
        result: dict[str, EmitReport] = {}
        source = threading.Thread(
            target=lambda: result.setdefault("report", emit_records(
                producer, _source(settings, opts), rate=opts.rate, stop=stop_source,
                limit=opts.max_events,
                on_invalid=lambda m: log.warning("invalid input: %s", m),
            )),
            name="event-source",
            daemon=True,
        )
        source.start()
        what = f"replaying {opts.replay}" if opts.replay else f"synthetic events (seed {opts.seed})"
        say(f"ready: {what} at {opts.rate:g}/s; Ctrl-C to stop")
        host, _, port = settings.redis.url.removeprefix("redis://").partition("/")[0].partition(":")
        say("look: .venv/bin/streamrec feed u1        (a user's live feed; users are u0..u1999)")
        say(f"      redis-cli -h {host} -p {port} GET {Keys(settings.redis.key_prefix).feed('u1')}")
        say(f"      .venv/bin/streamrec emit --synthetic --rate 100   (more events; logs in "
            f"{runtime.run_dir})")

        deadline = None if opts.duration_s is None else started + opts.duration_s
        last_print, last_arrived = time.monotonic(), 0
        while not stop.is_set():
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            stop.wait(opts.status_every_s if remaining is None else min(opts.status_every_s, remaining))
            runtime.check_alive()
            now = time.monotonic()
            arrived = monitor.count
            st = stats()
            say(f"[{now - started:6.1f}s] emitted {producer.stats.sent:>8}  "
                f"arrived {arrived:>8} ({(arrived - last_arrived) / (now - last_print):.0f}/s)  "
                f"processed {st.get('processed', 0):>8}  dlq {st.get('invalid', 0):>5}  "
                f"examples {st.get('examples', 0):>7}  model v{st.get('scorer_model_version', '-')}  "
                f"feeds {st.get('scorer_feeds_written', 0):>7}")
            last_print, last_arrived = now, arrived
            # A replay ends the run when the file is done; --events stops the source only.
            source_done = not source.is_alive() and opts.max_events is None
            if (deadline is not None and now >= deadline) or source_done:
                break

        stop_source.set()
        source.join()
        producer.flush(30)
        # Let the pipeline catch up with what was acknowledged before reporting.
        drain_deadline = time.monotonic() + 20
        while time.monotonic() < drain_deadline and (
                monitor.count < producer.stats.delivered
                or stats().get("processed", 0) < producer.stats.delivered):
            runtime.check_alive()
            time.sleep(0.1)
        monitor.stop()
        st = stats()
        fresh = sorted(float(x) for x in redis_client.lrange(
            Keys(settings.redis.key_prefix).scorer_freshness, 0, -1))
        redis_client.close()
        checkpoints = list_versions(Path(settings.trainer.checkpoint_dir))
        train_steps = (read_manifest(version_dir(Path(settings.trainer.checkpoint_dir),
                                                 checkpoints[-1])).step if checkpoints else 0)
        lag = consumer_lag(settings)
        emit_report = result.get("report", EmitReport())
        return {
            "emitted": emit_report.emitted,
            "invalid_input": emit_report.invalid,
            "delivered": producer.stats.delivered,
            "arrived": monitor.count,
            "processed": st.get("processed", 0),
            "dead_lettered": st.get("invalid", 0),
            "duplicates": st.get("duplicate", 0),
            "examples": st.get("examples", 0),
            "train_steps": train_steps,
            "checkpoints": len(checkpoints),
            "model_version": st.get("scorer_model_version"),
            "feeds_written": st.get("scorer_feeds_written", 0),
            "freshness_ms": {"p50": _pct(fresh, 50), "p99": _pct(fresh, 99), "n": len(fresh)},
            "lag_max": max(lag.values(), default=0),
            "lag": lag,
            "duration_s": round(time.monotonic() - started, 2),
        }
    finally:
        if dashboard is not None:
            dashboard.close()
        remove_endpoints(settings)
        runtime.stop()
