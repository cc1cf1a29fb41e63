"""make chaos: kill -9 each component under a steady stream, restart Redis, restart the Kafka
broker twice, then prove nothing was lost or applied twice.

On the embedded stack (Apache Kafka + Redis with AOF, in ``<run_dir>/bench/chaos``, emptied first),
with a stream worker, the trainer and a scorer running, a deterministic synthetic stream (plus
invalid records and duplicates) is sent at a steady rate. While it flows:

1. the stream worker gets SIGKILL and is restarted 2 s later;
2. the trainer gets SIGKILL and is restarted 5 s later (the scorer must keep serving meanwhile);
3. the broker gets SIGTERM (a controlled shutdown) and is started again 2 s later;
4. the scorer gets SIGKILL and is restarted 2 s later;
5. Redis is restarted (SIGTERM, which writes the AOF, then started again on the same port);
6. with ``runtime.redis_appendfsync=always`` (the default), Redis gets SIGKILL and is started
   again: only what its append-only file held survives, which must be every acknowledged write;
7. the broker gets SIGKILL and is started again 2 s later (log recovery).

The broker is restarted from a helper thread while the stream keeps flowing into the producer's
buffer; nothing of ours is restarted for it: producers and consumers must reconnect by
themselves (``unexpected_exits`` counts components that died anyway). With Tansu
(``runtime.broker=tansu``, in-memory) or an external Kafka there are no broker restarts.

Afterwards, the same events go through a clean worker on fresh topics and a fresh key prefix, and
the two feature states are compared: raw counters must be equal, decayed ones equal up to float
rounding. ``events_lost`` counts valid events missing from the state; ``double_applied`` counts
events applied more than once. RSS is sampled per component every second.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import redis

from benchmarks.common import bench_settings, fresh_topics, report
from deploy.embedded import EmbeddedRuntime, KafkaProcess
from models.checkpoint import list_versions, read_manifest, version_dir
from streaming.contract.events import Event
from streaming.contract.names import Keys
from streaming.errors import BrokerError
from streaming.ingest.state_store import read_stats
from streaming.io.producer import EventProducer
from streaming.io.redis_client import connect
from streaming.ops import health
from streaming.ops.lag_monitor import LagCollector
from streaming.ops.process import ManagedProcess, component_process
from streaming.settings import Settings
from streaming.sources.synthetic import SyntheticConfig, SyntheticStream


def rss_mb(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Component:
    """A restartable ``streamrec`` subcommand with a log and exit accounting, started as
    ``streamrec up`` starts it (:func:`streaming.ops.process.component_process`: the same
    environment, and the trainer's priority and threads)."""

    def __init__(self, settings: Settings, run_dir: Path, name: str, *args: str) -> None:
        template = component_process(settings, run_dir, name, *args)
        self.name, self.argv, self.log = name, template.argv, template.log_path
        self.env, self.nice = template.env, template.nice
        self.proc: ManagedProcess | None = None
        self.restarts = 0
        self.unexpected_exits = 0
        self.max_rss_mb = 0.0
        self.planned_down = False

    def start(self) -> None:
        self.proc = ManagedProcess(self.name, self.argv, self.log, env=self.env, nice=self.nice)
        self.proc.start()

    def kill9(self) -> None:
        assert self.proc is not None and self.proc.pid is not None
        self.planned_down = True
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.proc.wait()  # type: ignore[union-attr]
        self.proc.stop()  # closes the log handle

    def restart(self) -> None:
        self.restarts += 1
        self.start()
        self.planned_down = False

    def check(self) -> None:
        """Count (and recover from) exits the harness did not cause."""
        if self.proc is not None and not self.planned_down and not self.proc.alive():
            self.unexpected_exits += 1
            print(f"chaos: {self.name} exited on its own:\n{self.proc.tail()}", file=sys.stderr)
            self.start()

    def sample(self) -> None:
        self.max_rss_mb = max(self.max_rss_mb, rss_mb(self.proc.pid if self.proc else None))

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(20)


class BrokerFaults:
    """Restarts the embedded Kafka under load from helper threads, so that the stream keeps
    flowing (into the producer's buffer) while the broker is down. A JVM dies with the thread
    that started it (PDEATHSIG), so each helper lives until :meth:`close`, which is called
    once the runtime has stopped the broker."""

    def __init__(self, runtime: EmbeddedRuntime) -> None:
        proc = next((p for p in runtime.processes if isinstance(p, KafkaProcess)), None)
        self.proc: KafkaProcess | None = proc
        self.outages: list[dict[str, Any]] = []
        self._done = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._error: BaseException | None = None

    def restart(self, kill: bool, pause_s: float, log: list[str], started: float) -> None:
        """Stop the broker (SIGKILL if ``kill``, else SIGTERM), start it ``pause_s`` later."""
        self.wait_idle()
        self._idle.clear()
        threading.Thread(target=self._run, args=(kill, pause_s, log, started),
                         name="broker-restart", daemon=True).start()

    def _run(self, kill: bool, pause_s: float, log: list[str], started: float) -> None:
        assert self.proc is not None
        how = "kill -9" if kill else "SIGTERM"
        try:
            t0 = time.monotonic()
            code = self.proc.kill() if kill else self.proc.stop()
            stopped = time.monotonic()
            time.sleep(pause_s)
            t1 = time.monotonic()
            self.proc.start()
            up = time.monotonic()
            log.append(f"{up - started:6.1f}s  kafka back ({how}: exit {code}, stopped in "
                       f"{stopped - t0:.1f} s, started in {up - t1:.1f} s)")
            self.outages.append({"how": how, "exit_code": code, "stop_s": round(stopped - t0, 1),
                                 "start_s": round(up - t1, 1), "down_s": round(up - t0, 1)})
        except BaseException as exc:  # reported by wait_idle() in the main thread
            self._error = exc
        finally:
            self._idle.set()
        self._done.wait()  # keep the thread (and so the JVM it started) alive

    def busy(self) -> bool:
        """Whether a restart is in progress (the broker is down or starting)."""
        return not self._idle.is_set()

    def wait_idle(self, timeout_s: float = 300.0) -> None:
        """Wait for a restart in progress; re-raise its error."""
        if not self._idle.wait(timeout_s):
            raise TimeoutError("chaos: the broker restart did not finish")
        if self._error is not None:
            raise RuntimeError(f"chaos: broker restart failed: {self._error}") from self._error

    def close(self) -> None:
        """Let the helper threads end (after the runtime stopped the broker)."""
        self._done.set()


def stream(n: int, seed: int) -> list[tuple[bytes | None, bytes, str]]:
    """(key, value, kind) with kind in valid|duplicate|invalid; deterministic for the seed."""
    start = int(time.time() * 1000) - 3 * 3600 * 1000
    events: list[Event] = list(SyntheticStream(seed, SyntheticConfig(n_users=800, n_items=2000))
                               .events(start, rate=20.0, limit=n))
    out: list[tuple[bytes | None, bytes, str]] = []
    for k, e in enumerate(events):
        out.append((e.key, e.to_json(), "valid"))
        if k % 300 == 150:
            out.append((e.key, e.to_json(), "duplicate"))
        if k % 500 == 250:
            out.append((e.key, b'{"event_id": "broken", ', "invalid"))
    return out


def dump_state(client: redis.Redis, prefix: str) -> dict[str, dict[str, str]]:
    """User and item feature hashes under ``prefix`` (the state that counts events)."""
    out: dict[str, dict[str, str]] = {}
    keys = Keys(prefix)
    for pattern in (keys.user("*"), keys.item("*")):
        for key in client.scan_iter(match=pattern, count=2000):
            out[key.decode()[len(prefix):]] = {
                k.decode(): v.decode() for k, v in client.hgetall(key).items()}
    return out


def compare(chaos: dict[str, dict[str, str]], clean: dict[str, dict[str, str]]
            ) -> tuple[int, int, list[str]]:
    """(events missing, events applied twice, first differences). Raw per-type counts on item
    hashes (``n.view`` ...) count applications exactly; decayed values must match to rounding."""
    lost = double = 0
    diffs: list[str] = []
    for key in sorted(set(chaos) | set(clean)):
        a, b = chaos.get(key, {}), clean.get(key, {})
        for field in sorted(set(a) | set(b)):
            va, vb = a.get(field), b.get(field)
            if field.startswith("n."):
                delta = int(float(va or 0)) - int(float(vb or 0))
                double += max(0, delta)
                lost += max(0, -delta)
            if va == vb:
                continue
            try:
                same = va is not None and vb is not None and math.isclose(
                    float(va), float(vb), rel_tol=1e-9, abs_tol=1e-12)
            except ValueError:
                same = False
            if not same and len(diffs) < 10:
                diffs.append(f"{key} {field}: chaos={va} clean={vb}")
    return lost, double, diffs


def wait_until(what: str, check: Callable[[], bool], timeout_s: float,
               tick: Callable[[], None] = lambda: None) -> float:
    started = time.monotonic()
    while not check():
        tick()
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"chaos: timed out waiting for {what}")
        time.sleep(0.2)
    return time.monotonic() - started


def run(runtime: EmbeddedRuntime, n_events: int, rate: float, seed: int,
        broker: BrokerFaults) -> dict[str, Any]:
    settings = runtime.settings
    run_dir = Path(settings.runtime.run_path) / "chaos" / time.strftime("%Y%m%d-%H%M%S")
    chaos = fresh_topics(settings, **{
        "stream.attribution_window_ms": "60000", "stream.allowed_lateness_ms": "2000",
        "stream.covisit_top_k": "1000",  # top-K trims depend on arrival order (features.py)
        "trainer.publish_interval_s": "5", "trainer.checkpoint_dir": str(run_dir / "ckpt"),
    })
    comps = {name: Component(chaos, run_dir, name, *args)
             for name, args in (("worker", ["worker"]), ("trainer", ["train"]),
                                ("scorer", ["score"]))}
    client = connect(chaos.redis)
    prefix = chaos.redis.key_prefix
    partitions = range(chaos.topics.events_partitions)
    for c in comps.values():
        c.start()
    wait_until("components to consume", lambda: {"ingest", "trainer", "scorer"} <= health.consuming(
        health.parse(client.hgetall(health.key(prefix))), int(time.time() * 1000)), 180,
        tick=lambda: [c.check() for c in comps.values()])

    records = stream(n_events, seed)
    stop_sampling = threading.Event()

    def sampler() -> None:
        while not stop_sampling.wait(1.0):
            for c in comps.values():
                c.sample()

    threading.Thread(target=sampler, daemon=True).start()
    plan = [(0.15, "worker"), (0.35, "trainer"), (0.60, "scorer"), (0.75, "redis")]
    if settings.runtime.redis_appendfsync == "always":
        # kill -9 loses nothing only when every acknowledged write is fsync'ed first.
        plan.append((0.82, "redis-9"))
    if broker.proc is not None:
        plan += [(0.45, "kafka"), (0.88, "kafka-9")]
    faults = {int(len(records) * f): name for f, name in plan}
    log: list[str] = []
    outage: dict[str, Any] = {}
    producer = EventProducer(chaos)
    started = time.monotonic()
    redis_restarts = kafka_restarts = 0
    pending: dict[str, float] = {}  # component -> when to restart it
    killed_ms: dict[str, int] = {}  # component -> when its process was last killed

    def all_consuming() -> bool:
        try:
            beats = health.parse(client.hgetall(health.key(prefix)))
        except redis.RedisError:
            return False
        now_ms = int(time.time() * 1000)
        # A killed worker's last beats stay recent for STALE_MS: only its successor's count, as
        # a Faust worker still starting exits when the broker goes (below). The trainer and the
        # scorer (librdkafka) ride out an outage while they start, so their beats need not be
        # fresh: waiting for a restarted trainer's torch import would push this fault past the
        # next one.
        return {"ingest", "trainer", "scorer"} <= health.consuming(beats, now_ms) and (
            "ingest" in health.consuming(beats, now_ms, since_ms=killed_ms.get("worker", 0)))

    postpone = max(1, int(rate / 2))  # records: ~0.5 s
    for k, (key, value, _) in enumerate(records):
        due = started + k / rate
        if (d := due - time.monotonic()) > 0:
            time.sleep(d)
        producer.send_raw(key, value)
        what = faults.pop(k, None)
        # The broker goes down only once every component is up and consuming: a Faust worker
        # still starting when the broker disappears exits (aiokafka does not retry its
        # bootstrap), and a supervisor would restart it; running clients must ride it out.
        if what and what.startswith("kafka") and not all_consuming() and k + postpone < len(records):
            later = k + postpone
            while later in faults:
                later += 1
            faults[later] = what
            continue
        if what:
            action = {"kafka": "stop kafka (SIGTERM)", "kafka-9": "kill -9 kafka",
                      "redis": "restart redis (SIGTERM)",
                      "redis-9": "kill -9 redis"}.get(what, f"kill -9 {what}")
            log.append(f"{time.monotonic() - started:6.1f}s  {action} at record {k}")
            if what.startswith("redis"):
                restart_redis(runtime, kill=what == "redis-9")
                redis_restarts += 1
            elif what.startswith("kafka"):
                broker.restart(kill=what == "kafka-9", pause_s=2.0, log=log, started=started)
                kafka_restarts += 1
            else:
                comps[what].kill9()
                killed_ms[what] = int(time.time() * 1000)
                pause = 5.0 if what == "trainer" else 2.0
                before = _scorer_stat(client, prefix, "feeds_written")
                # Keep sending while it is down: the stream does not wait for repairs. Restarted
                # from this thread: children die with the thread that started them (PDEATHSIG).
                restart_at = time.monotonic() + pause
                pending[what] = restart_at
                if what == "trainer":
                    outage = {"feeds_before": before, "until": restart_at}
        # A component killed meanwhile is started again once the broker is back (see above).
        for name, at in list(pending.items()):
            if time.monotonic() >= at and not broker.busy():
                comps[name].restart()
                del pending[name]
        if outage and "feeds_after" not in outage and time.monotonic() >= outage["until"]:
            outage["feeds_after"] = _scorer_stat(client, prefix, "feeds_written")
        if k % 500 == 0 and not broker.busy():
            for c in comps.values():
                c.check()
    broker.wait_idle()
    for name, at in pending.items():
        time.sleep(max(0.0, at - time.monotonic()))
        comps[name].restart()
    producer.flush(120)
    delivered = producer.stats.delivered
    emit_s = time.monotonic() - started

    def processed() -> bool:
        return read_stats(client, prefix, partitions).get("processed", 0) >= delivered

    drain_s = wait_until("the worker to process everything", processed, 300,
                         tick=lambda: [c.check() for c in comps.values()])
    stats = read_stats(client, prefix, partitions)
    total_examples = stats.get("examples", 0)
    ckpt = Path(chaos.trainer.checkpoint_dir)

    def trained_all() -> bool:
        versions = list_versions(ckpt)
        return bool(versions) and read_manifest(
            version_dir(ckpt, versions[-1])).examples_seen >= total_examples

    trainer_ok = True
    try:
        wait_until("the trainer to train every example", trained_all, 120,
                   tick=lambda: [c.check() for c in comps.values()])
    except TimeoutError as exc:
        trainer_ok = False
        log.append(str(exc))
    versions = list_versions(ckpt)
    final = read_manifest(version_dir(ckpt, versions[-1])) if versions else None
    anomalies = watermark_anomalies(chaos)
    stop_sampling.set()
    for c in comps.values():
        c.stop()
    resumed = "resumed from checkpoint" in comps["trainer"].log.read_text(errors="replace")
    chaos_state = dump_state(client, prefix)

    # The same records through a clean worker: the state an uninterrupted run reaches.
    clean = fresh_topics(settings, **{k: str(v) for k, v in (
        ("stream.attribution_window_ms", 60000), ("stream.allowed_lateness_ms", 2000),
        ("stream.covisit_top_k", 1000))})
    worker = Component(clean, run_dir, "clean-worker", "worker")
    worker.start()
    with EventProducer(clean) as p:
        for key, value, _ in records:
            p.send_raw(key, value)
    wait_until("the clean worker", lambda: read_stats(client, clean.redis.key_prefix, range(
        clean.topics.events_partitions)).get("processed", 0) >= delivered, 300, tick=worker.check)
    clean_stats = read_stats(client, clean.redis.key_prefix, range(clean.topics.events_partitions))
    worker.stop()
    clean_state = dump_state(client, clean.redis.key_prefix)
    client.close()
    lost, double, diffs = compare(chaos_state, clean_state)
    valid = sum(kind == "valid" for _, _, kind in records)
    conserved = stats.get("accepted", 0) + stats.get("duplicate", 0) + stats.get("invalid", 0)
    return {
        "events_emitted": delivered,
        "events_valid": valid,
        "events_lost": lost + max(0, valid - stats.get("accepted", 0)),
        "double_applied": double + max(0, stats.get("accepted", 0) - valid),
        "conservation": {"processed": stats.get("processed", 0), "accepted_plus_duplicate_plus_invalid":
                         conserved, "accepted": stats.get("accepted", 0),
                         "duplicate": stats.get("duplicate", 0), "invalid": stats.get("invalid", 0),
                         "clean_run": {k: clean_stats.get(k, 0) for k in
                                       ("accepted", "duplicate", "invalid")}},
        "state_differences": diffs,
        "state_keys": {"chaos": len(chaos_state), "clean": len(clean_state)},
        "restarts": {**{n: c.restarts for n, c in comps.items()}, "redis": redis_restarts,
                     "kafka": kafka_restarts},
        "broker": runtime.broker.describe() if runtime.broker else "external",
        "redis_appendfsync": settings.runtime.redis_appendfsync,
        "broker_outages": broker.outages,
        "lag_watermark_anomalies": anomalies,
        "unexpected_exits": {n: c.unexpected_exits for n, c in comps.items()},
        "max_rss_mb": {**{n: round(c.max_rss_mb, 1) for n, c in comps.items()},
                       "max": round(max(c.max_rss_mb for c in comps.values()), 1)},
        "trainer": {"resumed_from_checkpoint": resumed, "trained_every_example": trainer_ok,
                    "examples": total_examples,
                    "final_examples_seen": final.examples_seen if final else 0,
                    "final_version": final.version if final else 0},
        "scorer_during_trainer_outage": {
            "feeds_written": (outage.get("feeds_after", 0) - outage.get("feeds_before", 0))
            if outage else None},
        "timeline": log,
        "emit_s": round(emit_s, 1),
        "drain_s": round(drain_s, 1),
        "rate_per_s": rate,
    }


def watermark_anomalies(settings: Settings) -> int | None:
    """Partitions where the broker reports a log-end below a committed offset (lag monitor)."""
    try:
        collector = LagCollector(settings)
    except BrokerError:
        return None
    try:
        return sum(1 for p in collector.collect(ages=False) if p.anomaly)
    except BrokerError:
        return None
    finally:
        collector.close()


def _scorer_stat(client: redis.Redis, prefix: str, name: str) -> int:
    try:
        return int(client.hget(Keys(prefix).scorer_stats, name) or 0)
    except redis.RedisError:
        return 0


def restart_redis(runtime: EmbeddedRuntime, kill: bool = False) -> None:
    """SIGTERM the embedded redis-server (it writes its AOF), or ``kill`` it (SIGKILL: only
    what its append-only file already holds survives), and start it again on the same port."""
    proc = next(p for p in runtime.processes if p.name == "redis")
    if kill and proc.proc is not None:
        proc.proc.kill()
        proc.proc.wait()
    proc.stop(20)
    proc.start()
    client = connect(runtime.settings.redis)
    try:
        wait_until("redis to come back", lambda: _ping(client), 30)
    finally:
        client.close()


def _ping(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def main(argv: list[str] | None = None, settings: Settings | None = None) -> None:
    ap = argparse.ArgumentParser(prog="streamrec bench chaos")
    ap.add_argument("--events", type=int, default=30_000)
    ap.add_argument("--rate", type=float, default=300.0, help="records per second")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--no-save", action="store_true",
                    help="print the JSON line only (tests); do not write the results file")
    args = ap.parse_args(argv)
    settings = bench_settings(settings or Settings.load(), "chaos")
    if settings.redis.url:
        raise SystemExit("make chaos restarts Redis: run it on the embedded stack (no REDIS_URL)")
    runtime = EmbeddedRuntime(settings)
    runtime.start()  # in the main thread: the broker's JVM dies with the thread that starts it
    broker = BrokerFaults(runtime)
    try:
        result = run(runtime, args.events, args.rate, args.seed, broker)
    finally:
        with contextlib.suppress(Exception):
            broker.wait_idle()
        runtime.stop()
        broker.close()
    if args.no_save:
        print(orjson.dumps({"name": "reliability", **result}).decode(), flush=True)
    else:
        report("reliability", result)


if __name__ == "__main__":
    main()
