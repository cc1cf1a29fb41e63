"""make chaos: kill -9 each component under a steady stream, restart Redis, then prove nothing was
lost or applied twice.

On the embedded stack (Tansu + Redis with AOF), with a stream worker, the trainer and a scorer
running, a deterministic synthetic stream (plus invalid records and duplicates) is sent at a
steady rate. While it flows:

1. the stream worker gets SIGKILL and is restarted 2 s later;
2. the trainer gets SIGKILL and is restarted 5 s later (the scorer must keep serving meanwhile);
3. the scorer gets SIGKILL and is restarted 2 s later;
4. Redis is restarted (SIGTERM, which writes the AOF, then started again on the same port).

Afterwards, the same events go through a clean worker on fresh topics and a fresh key prefix, and
the two feature states are compared: raw counters must be equal, decayed ones equal up to float
rounding. ``events_lost`` counts valid events missing from the state; ``double_applied`` counts
events applied more than once. RSS is sampled per component every second.
"""

from __future__ import annotations

import argparse
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

from benchmarks.common import fresh_topics, report
from deploy.embedded import EmbeddedRuntime
from models.checkpoint import list_versions, read_manifest, version_dir
from streaming.contract.events import Event
from streaming.contract.names import Keys
from streaming.ingest.state_store import read_stats
from streaming.io.producer import EventProducer
from streaming.io.redis_client import connect
from streaming.ops import health
from streaming.ops.process import ManagedProcess
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
    """A restartable ``streamrec`` subcommand (or any argv) with a log and exit accounting."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str]) -> None:
        self.name, self.argv, self.log, self.env = name, argv, log, env
        self.proc: ManagedProcess | None = None
        self.restarts = 0
        self.unexpected_exits = 0
        self.max_rss_mb = 0.0
        self.planned_down = False

    def start(self) -> None:
        self.proc = ManagedProcess(self.name, self.argv, self.log, env=self.env)
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


def run(runtime: EmbeddedRuntime, n_events: int, rate: float, seed: int) -> dict[str, Any]:
    settings = runtime.settings
    run_dir = Path(settings.runtime.run_path) / "chaos" / time.strftime("%Y%m%d-%H%M%S")
    chaos = fresh_topics(settings, **{
        "stream.attribution_window_ms": "60000", "stream.allowed_lateness_ms": "2000",
        "stream.covisit_top_k": "1000",  # top-K trims depend on arrival order (features.py)
        "trainer.publish_interval_s": "5", "trainer.checkpoint_dir": str(run_dir / "ckpt"),
    })
    env = chaos.child_env(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    cli = [sys.executable, "-m", "deploy.cli"]
    comps = {name: Component(name, [*cli, *args], run_dir / f"{name}.log", env)
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
    faults = {int(len(records) * f): name for f, name in
              ((0.15, "worker"), (0.35, "trainer"), (0.55, "scorer"), (0.75, "redis"))}
    log: list[str] = []
    outage: dict[str, Any] = {}
    producer = EventProducer(chaos)
    started = time.monotonic()
    redis_restarts = 0
    pending: dict[str, float] = {}  # component -> when to restart it
    for k, (key, value, _) in enumerate(records):
        due = started + k / rate
        if (d := due - time.monotonic()) > 0:
            time.sleep(d)
        producer.send_raw(key, value)
        if k in faults:
            what = faults[k]
            log.append(f"{time.monotonic() - started:6.1f}s  kill {what} at record {k}")
            if what == "redis":
                restart_redis(runtime)
                redis_restarts += 1
            else:
                comps[what].kill9()
                pause = 5.0 if what == "trainer" else 2.0
                before = _scorer_stat(client, prefix, "feeds_written")
                # Keep sending while it is down: the stream does not wait for repairs. Restarted
                # from this thread: children die with the thread that started them (PDEATHSIG).
                restart_at = time.monotonic() + pause
                pending[what] = restart_at
                if what == "trainer":
                    outage = {"feeds_before": before, "until": restart_at}
        for name, at in list(pending.items()):
            if time.monotonic() >= at:
                comps[name].restart()
                del pending[name]
        if outage and "feeds_after" not in outage and time.monotonic() >= outage["until"]:
            outage["feeds_after"] = _scorer_stat(client, prefix, "feeds_written")
        if k % 500 == 0:
            for c in comps.values():
                c.check()
    for name, at in pending.items():
        time.sleep(max(0.0, at - time.monotonic()))
        comps[name].restart()
    producer.flush(60)
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
    stop_sampling.set()
    for c in comps.values():
        c.stop()
    resumed = "resumed from checkpoint" in comps["trainer"].log.read_text(errors="replace")
    chaos_state = dump_state(client, prefix)

    # The same records through a clean worker: the state an uninterrupted run reaches.
    clean = fresh_topics(settings, **{k: str(v) for k, v in (
        ("stream.attribution_window_ms", 60000), ("stream.allowed_lateness_ms", 2000),
        ("stream.covisit_top_k", 1000))})
    clean_env = clean.child_env(os.environ)
    worker = Component("clean-worker", [*cli, "worker"], run_dir / "clean-worker.log", clean_env)
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
        "restarts": {**{n: c.restarts for n, c in comps.items()}, "redis": redis_restarts},
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


def _scorer_stat(client: redis.Redis, prefix: str, name: str) -> int:
    try:
        return int(client.hget(Keys(prefix).scorer_stats, name) or 0)
    except redis.RedisError:
        return 0


def restart_redis(runtime: EmbeddedRuntime) -> None:
    """SIGTERM the embedded redis-server (it writes its AOF) and start it again, same port."""
    proc = next(p for p in runtime.processes if p.name == "redis")
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
    settings = settings or Settings.load()
    if settings.redis.url:
        raise SystemExit("make chaos restarts Redis: run it on the embedded stack (no REDIS_URL)")
    with EmbeddedRuntime(settings) as runtime:
        result = run(runtime, args.events, args.rate, args.seed)
    if args.no_save:
        print(orjson.dumps({"name": "reliability", **result}).decode(), flush=True)
    else:
        report("reliability", result)


if __name__ == "__main__":
    main()
