"""``streamrec up``: the whole loop on one machine.

Starts (or connects to) Kafka and Redis, creates the topics, runs an event source (synthetic
generator or file replay) and watches events arrive, until stopped or ``duration_s`` elapses.
Prints a status line every few seconds and, at the end, one JSON summary line. Components that
exit are restarted with backoff (:mod:`deploy.supervisor`); the summary counts the restarts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from deploy.dashboard import Dashboard
from deploy.embedded import EmbeddedRuntime, remove_endpoints, write_endpoints
from deploy.up_parts import (
    ArrivalMonitor,
    EventSource,
    Supervision,
    UpOptions,
    end_offsets,
    ingest_caught_up,
    pipeline_stats,
    say_services,
    start_components,
    start_dashboard,
    status_line,
    summary,
    wait_consuming,
    wait_for_model,
)
from streaming.contract.names import Keys
from streaming.io.kafka import KafkaAdmin, topic_specs
from streaming.io.redis_client import connect
from streaming.settings import Settings

__all__ = ["UpOptions", "run_up"]

_POLL_S = 0.5  # how often the run checks its services and components



def run_up(settings: Settings, opts: UpOptions, stop: threading.Event,
           say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run until ``stop`` is set or the duration elapses; returns the summary dict."""
    runtime = EmbeddedRuntime(settings)
    settings = runtime.start()
    dashboard: Dashboard | None = None
    watch: Supervision | None = None
    try:
        report = KafkaAdmin(settings).ensure_topics(topic_specs(settings))
        say_services(settings, runtime, report, say)
        started_ms = int(time.time() * 1000)  # the components' beats count from here
        metrics_urls, components = start_components(settings, runtime, opts)
        watch = Supervision.start(settings, runtime, components, metrics_urls, say)
        if opts.dashboard:
            dashboard = start_dashboard(settings, metrics_urls, say)
        # Other subcommands (emit, feed, lag, dashboard) find this run through this file.
        write_endpoints(settings, runtime.run_dir, metrics=metrics_urls,
                        dashboard=dashboard.url if dashboard else None)
        redis_client = connect(settings.redis)
        wait_consuming(redis_client, settings, runtime, ("ingest", "scorer", "trainer"),
                       opts.ready_timeout_s, stop, say, watch.check, since_ms=started_ms)
        started = time.monotonic()  # the run's duration counts from the first event
        # Counters in Redis outlive a run (its state is durable): the summary counts this run's.
        baseline = pipeline_stats(redis_client, settings)
        monitor = ArrivalMonitor(settings, settings.topics.events)
        monitor.start()
        source = EventSource(settings, opts)
        source.start()
        _say_ready(settings, opts, runtime, say)
        if opts.wait_for_model:  # measure feeds ranked by a model, not the cold start
            wait_for_model(redis_client, settings, opts.ready_timeout_s, stop, watch.check, say)
            started, baseline = time.monotonic(), pipeline_stats(redis_client, settings)
            redis_client.delete(Keys(settings.redis.key_prefix).scorer_freshness)

        deadline = None if opts.duration_s is None else started + opts.duration_s
        last_print, last_arrived = time.monotonic(), 0
        while not stop.is_set():
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            # Short waits: the supervisor restarts an exited component within half a second.
            stop.wait(_POLL_S if remaining is None else min(_POLL_S, remaining))
            watch.check()
            now, arrived = time.monotonic(), monitor.count
            if now - last_print >= opts.status_every_s:
                say(status_line(now - started, source.producer.stats.sent, arrived,
                                (arrived - last_arrived) / (now - last_print),
                                pipeline_stats(redis_client, settings, baseline)))
                last_print, last_arrived = now, arrived
            # A replay ends the run when the file is done; --events stops the source only.
            source_done = not source.alive() and opts.max_events is None
            if (deadline is not None and now >= deadline) or source_done:
                break

        emitted = source.stop()
        delivered = source.producer.stats.delivered
        # Let the pipeline catch up with what was acknowledged before reporting.
        drain_deadline = time.monotonic() + 20
        ends = end_offsets(settings, settings.topics.events)
        while time.monotonic() < drain_deadline and (
                monitor.count < delivered or not ingest_caught_up(redis_client, settings, ends)):
            watch.check()
            time.sleep(0.1)
        monitor.stop()
        fresh = sorted(float(x) for x in redis_client.lrange(
            Keys(settings.redis.key_prefix).scorer_freshness, 0, -1))
        st = pipeline_stats(redis_client, settings)
        redis_client.close()
        return summary(settings, st, emitted, delivered, monitor.count, fresh,
                       time.monotonic() - started, baseline, watch.supervisor.restarts)
    finally:
        if dashboard is not None:
            dashboard.close()
        if watch is not None:
            watch.close()
        remove_endpoints(settings)
        runtime.stop()


def _say_ready(settings: Settings, opts: UpOptions, runtime: EmbeddedRuntime,
               say: Callable[[str], None]) -> None:
    what = f"replaying {opts.replay}" if opts.replay else f"synthetic events (seed {opts.seed})"
    say(f"ready: {what} at {opts.rate:g}/s; Ctrl-C to stop")
    host, _, port = settings.redis.url.removeprefix("redis://").partition("/")[0].partition(":")
    say("look: .venv/bin/streamrec feed u1        (a user's live feed; users are u0..u1999)")
    say(f"      redis-cli -h {host} -p {port} GET {Keys(settings.redis.key_prefix).feed('u1')}")
    say(f"      .venv/bin/streamrec emit --synthetic --rate 100   (more events; logs in "
        f"{runtime.run_dir})")
