"""bench soak: sustained load. 10 minutes at 1,000 events/s through the whole loop on the
embedded stack (stream worker, trainer, scorer), sampling every component's RSS and every
consumer group's lag.

Reported per component: RSS at the end of the first minute (after warm-up), at the end, and the
maximum; per group: the mean lag of the first and of the last third of the run, and the maximum.
Memory is bounded when RSS stops growing after warm-up (``flat``: the maximum after minute 2 is
within +10% of the RSS at minute 2); lag does not grow when the last third's mean is not above
the first's.
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.chaos import Component, rss_mb
from benchmarks.common import bench_settings, fresh_topics, group_lag, report, wait_consuming
from deploy.embedded import EmbeddedRuntime
from streaming.errors import BrokerError
from streaming.ingest.state_store import read_stats
from streaming.io.producer import EventProducer
from streaming.io.redis_client import connect
from streaming.ops.lag_monitor import LagCollector
from streaming.settings import Settings
from streaming.sources.emit import emit_records
from streaming.sources.synthetic import SyntheticStream


def run(settings: Settings, duration_s: float, rate: float) -> dict[str, Any]:
    run_dir = Path(settings.runtime.run_path) / "soak" / time.strftime("%Y%m%d-%H%M%S")
    s = fresh_topics(settings, **{"stream.attribution_window_ms": "60000",
                                  "trainer.checkpoint_dir": str(run_dir / "ckpt")})
    # Started as streamrec up starts them: malloc arenas, the trainer's priority and threads.
    comps = [Component(s, run_dir, n, *a)
             for n, a in (("worker", ["worker"]), ("trainer", ["train"]), ("scorer", ["score"]))]
    for c in comps:
        c.start()
    client = connect(s.redis)
    wait_consuming(client, s, (c.proc for c in comps))

    samples: list[dict[str, Any]] = []
    stop = threading.Event()
    collector = LagCollector(s)
    started = time.monotonic()

    def sample() -> None:
        while not stop.wait(5.0):
            row: dict[str, Any] = {"t": round(time.monotonic() - started, 1)}
            row["rss"] = {c.name: round(rss_mb(c.proc.pid if c.proc else None), 1) for c in comps}
            try:
                row["lag"] = group_lag(collector)
            except BrokerError as exc:  # a failed sample is recorded, not fatal
                row["lag_error"] = str(exc)
            samples.append(row)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    producer = EventProducer(s)
    records = ((f"synthetic:{n}", e) for n, e in enumerate(SyntheticStream(seed=3).live(rate)))
    timer = threading.Timer(duration_s, stop.set)
    timer.start()
    emitted = emit_records(producer, records, rate=rate, stop=stop)
    producer.flush(60)
    sampler.join()
    stats = read_stats(client, s.redis.key_prefix, range(s.topics.events_partitions))
    alive = {c.name: bool(c.proc and c.proc.alive()) for c in comps}
    for c in comps:
        c.stop()
    collector.close()
    client.close()

    def window(lo: float, hi: float) -> list[dict[str, Any]]:
        return [r for r in samples if lo <= r["t"] < hi]

    third = duration_s / 3
    first, last = window(0, third), window(2 * third, duration_s + 10)
    warm = window(55, 70) or samples[:1]
    after2 = window(115, 130) or warm
    rss = {c.name: {"after_1min_mb": warm[0]["rss"][c.name] if warm else None,
                    "after_2min_mb": after2[0]["rss"][c.name] if after2 else None,
                    "end_mb": samples[-1]["rss"][c.name] if samples else None,
                    "max_mb": max((r["rss"][c.name] for r in samples), default=None)}
           for c in comps}
    for v in rss.values():
        # Bounded memory (issue target): after minute 2, RSS never exceeds +10%.
        if v["after_2min_mb"] and v["max_mb"]:
            v["max_vs_after_2min"] = round(v["max_mb"] / v["after_2min_mb"], 3)
            v["flat"] = v["max_vs_after_2min"] <= 1.10
    groups = sorted({g for r in samples for g in r.get("lag", {})})

    def mean_lag(rows: list[dict[str, Any]], g: str) -> float | None:
        vals = [r["lag"][g] for r in rows if g in r.get("lag", {})]
        return round(sum(vals) / len(vals), 1) if vals else None

    lag = {g: {"first_third_mean": mean_lag(first, g), "last_third_mean": mean_lag(last, g),
               "max": max((r["lag"].get(g, 0) for r in samples if "lag" in r), default=None)}
           for g in groups}
    return {
        "duration_s": duration_s, "target_rate_per_s": rate,
        "emitted": emitted.emitted, "rate_per_s": round(emitted.emitted / emitted.elapsed_s, 1),
        "processed": stats.get("processed", 0), "examples": stats.get("examples", 0),
        "alive_at_end": alive, "rss": rss, "max_rss_mb": max(
            (v["max_mb"] or 0 for v in rss.values()), default=0), "lag": lag,
        "samples": samples,
    }


def main(argv: list[str] | None = None, settings: Settings | None = None) -> None:
    ap = argparse.ArgumentParser(prog="streamrec bench soak")
    ap.add_argument("--duration", type=float, default=600.0, metavar="S")
    ap.add_argument("--rate", type=float, default=1000.0, metavar="N")
    args = ap.parse_args(argv)
    settings = settings or Settings.load()
    with EmbeddedRuntime(bench_settings(settings, "soak")) as runtime:
        result = run(runtime.settings, args.duration, args.rate)
    report(f"soak-{args.rate:g}", result)  # one file per rate: soak-1000.json ...


if __name__ == "__main__":
    main()
