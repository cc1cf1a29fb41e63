"""bench resources: what each part of the loop costs in CPU, per 1,000 events/s (issue 17's
resource plan).

The whole loop runs as ``streamrec up`` runs it on one machine (the embedded Kafka and Redis, the
stream worker, the trainer with its ranks, the scorer, started with ``up``'s priorities and
threads), fed by the synthetic generator in this process at a few rates in turn. For each rate,
after a warm-up at that rate, the CPU time of every process tree is read from ``/proc`` at the
start and end of a measured window; ``cores`` is CPU seconds over wall seconds (1.0 = one core
busy). Alongside: the events the worker processed, the examples it produced and the feeds the
scorer wrote in the window, and the machine's own busy cores (``/proc/stat``; the baseline of
the run: what all of this adds up to, including anything else on the machine).

Rate 0 (no traffic) measures what the parts burn idle. Each row says whether the loop kept up
(``kept_up``): the worker processed >= 95% of the source rate (``ingest_kept_up``), the scorer's
backlog was under 2 s of events at the end (``feeds_kept_up``, the freshness target's budget),
and the machine was under 90% busy (``machine_saturated``: parts starve, the niced trainer
first). A straight line through each part's cores against the processed rate, over the rows
where ingest kept up on an unsaturated machine, gives its fixed cost at any traffic
(``fixed_cores``) and its cost per 1,000 events/s (``cores_per_1000_events_s``). Summed over the
loop's parts (not the generator, which stands for the apps): the cores 1,000 events/s needs and
the rate ``--cores`` cores sustain. A line is a simplification (per-event costs fall as
batches grow), so the rows stay the record.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.chaos import Component
from benchmarks.common import (
    bench_settings,
    fresh_topics,
    group_lag,
    report,
    wait_consuming,
)
from deploy.embedded import EmbeddedRuntime, KafkaProcess
from deploy.up_parts import pipeline_stats
from streaming.contract.names import GROUP_SCORER
from streaming.io.producer import EventProducer
from streaming.io.redis_client import connect
from streaming.ops.lag_monitor import LagCollector
from streaming.settings import Settings
from streaming.sources.emit import emit_records
from streaming.sources.synthetic import SyntheticStream

_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
RATES = "0,100,250,400,1000"
WARMUP_S, DURATION_S = 30.0, 60.0
READY_TIMEOUT_S = 180.0  # components consuming after start
DRAIN_S = 5.0  # between rates
FEED_BACKLOG_S = 2.0  # feeds keep up: scorer lag <= this many seconds of events (issue 17's p99)
SATURATED_SHARE = 0.9  # the machine is saturated at this share of its cores busy
PARTS = ("worker", "scorer", "trainer", "kafka", "redis", "generator")


def _proc_stats() -> dict[int, tuple[int, float]]:
    """Every process: pid -> (parent pid, user + system CPU seconds)."""
    out: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:  # exited while listing
            continue
        fields = raw[raw.rindex(")") + 2:].split()  # after "pid (comm) "
        out[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) * _TICK_S)
    return out


def tree_cpu_s(roots: dict[str, int | None], stats: dict[int, tuple[int, float]]
               ) -> dict[str, float]:
    """CPU seconds of each named root process and its live descendants (a trainer's ranks)."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    out: dict[str, float] = {}
    for name, root in roots.items():
        total, todo = 0.0, [root] if root is not None else []
        while todo:
            pid = todo.pop()
            total += stats.get(pid, (0, 0.0))[1]
            todo.extend(children.get(pid, ()))
        out[name] = total
    return out


def _cpu(roots: dict[str, int | None]) -> dict[str, float | None]:
    """CPU seconds of each part (None: no process of ours, e.g. an external Redis); the
    generator is this process alone (the others are its children)."""
    stats = _proc_stats()
    known = {name: pid for name, pid in roots.items() if pid is not None}
    out: dict[str, float | None] = {name: None for name in roots}
    return out | tree_cpu_s(known, stats) | {"generator": stats[os.getpid()][1]}


def machine_busy_s() -> float:
    """CPU seconds every core spent busy since boot (``/proc/stat``: all but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) * _TICK_S


def fit(rates: list[float], cores: list[float]) -> tuple[float, float]:
    """Least-squares line ``cores = fixed + per_1000 x rate / 1000`` over rates > 0; with one
    rate, no fixed part."""
    if len(rates) < 2:
        return 0.0, cores[0] / rates[0] * 1000
    slope, intercept = np.polyfit(np.array(rates) / 1000, np.array(cores), 1)
    return float(intercept), float(slope)


def measure(s: Settings, client: Any, collector: LagCollector, roots: dict[str, int | None],
            rate: float, warmup_s: float, duration_s: float) -> dict[str, Any]:
    """One rate's row (the source is already sending at ``rate``, or idle at 0)."""
    time.sleep(warmup_s)
    t0, busy0, st0 = time.monotonic(), machine_busy_s(), pipeline_stats(client, s)
    cpu0 = _cpu(roots)
    time.sleep(duration_s)
    cpu1 = _cpu(roots)
    wall, busy = time.monotonic() - t0, machine_busy_s() - busy0
    st = pipeline_stats(client, s, st0)
    lag = group_lag(collector)
    processed_s = st.get("processed", 0) / wall
    cpus = os.cpu_count() or 1
    ingest_ok = processed_s >= 0.95 * rate
    # Feeds keep up when the scorer's backlog is under the freshness budget's worth of events.
    feeds_ok = lag.get(GROUP_SCORER, 0) <= rate * FEED_BACKLOG_S
    saturated = busy / wall >= SATURATED_SHARE * cpus
    cores: dict[str, float | None] = {}
    for p in PARTS:
        a, b = cpu0[p], cpu1[p]
        cores[p] = None if a is None or b is None else round((b - a) / wall, 3)
    return {
        "source_rate_per_s": rate, "processed_per_s": round(processed_s, 1),
        "duplicates_per_s": round(st.get("duplicate", 0) / wall, 1),
        "ingest_kept_up": ingest_ok, "feeds_kept_up": feeds_ok, "machine_saturated": saturated,
        "kept_up": ingest_ok and feeds_ok and not saturated,
        "examples_per_s": round(st.get("examples", 0) / wall, 1),
        "feeds_per_s": round(st.get("scorer_feeds_written", 0) / wall, 1),
        "cores": cores, "machine_busy_cores": round(busy / wall, 3), "lag_at_end": lag}


def run(settings: Settings, runtime: EmbeddedRuntime, rates: list[float], warmup_s: float,
        duration_s: float) -> list[dict[str, Any]]:
    """Each rate in turn: warm up, then measure every part's cores and the loop's throughput."""
    run_dir = Path(settings.runtime.run_path) / "resources" / time.strftime("%Y%m%d-%H%M%S")
    s = fresh_topics(settings, **{"stream.attribution_window_ms": "60000",
                                  "trainer.checkpoint_dir": str(run_dir / "ckpt")})
    comps = [Component(s, run_dir, n, *a)
             for n, a in (("worker", ["worker"]), ("trainer", ["train"]), ("scorer", ["score"]))]
    client = connect(s.redis)
    producer = EventProducer(s)
    collector = LagCollector(s)
    stream = SyntheticStream(seed=3)
    stop = threading.Event()
    sender: threading.Thread | None = None
    rows: list[dict[str, Any]] = []
    try:
        for c in comps:
            c.start()
        wait_consuming(client, s, (c.proc for c in comps), READY_TIMEOUT_S)
        roots = {c.name: c.proc.pid if c.proc else None for c in comps} | {
            "kafka": next((p.pid for p in runtime.processes if isinstance(p, KafkaProcess)),
                          None),
            "redis": next((p.pid for p in runtime.processes
                           if getattr(p, "name", "") == "redis"), None),
            "generator": None}  # an external Kafka or Redis: not measured (null)
        for rate in rates:
            stop = threading.Event()
            # The generator numbers its events from 0 each time: ids tagged per rate, or the
            # worker's de-duplication window would drop the repeats.
            records = ((f"synthetic:{n}", replace(e, event_id=f"{e.event_id}-r{rate:g}"))
                       for n, e in enumerate(stream.live(rate)))
            sender = None
            if rate > 0:  # rate 0: the parts idle
                sender = threading.Thread(target=emit_records, args=(producer, records),
                                          kwargs={"rate": rate, "stop": stop}, daemon=True)
                sender.start()
            rows.append(measure(s, client, collector, roots, rate, warmup_s, duration_s))
            stop.set()
            if sender is not None:
                sender.join()
            producer.flush(60)
            for c in comps:
                c.proc.check_alive()  # type: ignore[union-attr]
            print(f"resources: {rows[-1]}", flush=True)
            time.sleep(DRAIN_S)
    finally:
        stop.set()
        if sender is not None:
            sender.join()
        producer.close()
        collector.close()
        for c in comps:
            c.stop()
        client.close()
    return rows


def summarize(rows: list[dict[str, Any]], cores: float) -> dict[str, Any]:
    """Per part, the line through the rows where ingest kept up on an unsaturated machine
    (rate > 0: what each part asked for, none starved of CPU); summed over the loop's parts (not
    the generator): its fixed cores, its cores per 1,000 events/s, the cores 1,000 events/s
    needs and the rate ``cores`` cores sustain (None where the line cannot say). Also the
    highest rates at which the whole loop (feeds too) and ingest alone kept up, as measured."""
    fitted = [r for r in rows if r["ingest_kept_up"] and not r["machine_saturated"]
              and r["source_rate_per_s"] > 0]
    measured = {
        "max_rate_kept_up": max((r["source_rate_per_s"] for r in rows
                                 if r["kept_up"] and r["source_rate_per_s"] > 0), default=None),
        "max_rate_ingest_kept_up": max((r["source_rate_per_s"] for r in rows
                                        if r["ingest_kept_up"]), default=None)}
    if not fitted:
        return {"fitted_on_rates": [], "parts": None, **measured}
    kept = fitted
    lines = {p: fit([r["processed_per_s"] for r in kept], [r["cores"][p] for r in kept])
             for p in PARTS if all(r["cores"][p] is not None for r in kept)}
    loop = [p for p in lines if p != "generator"]  # the apps' side is not the loop's cost
    fixed = sum(lines[p][0] for p in loop)
    per_1000 = sum(lines[p][1] for p in loop)
    return {
        "fitted_on_rates": [r["source_rate_per_s"] for r in kept],
        "parts": {p: {"fixed_cores": round(f, 3), "cores_per_1000_events_s": round(k, 3)}
                  for p, (f, k) in lines.items()},
        "loop_fixed_cores": round(fixed, 3), "loop_cores_per_1000_events_s": round(per_1000, 3),
        "loop_sustainable_events_s": round(max(0.0, cores - fixed) / per_1000 * 1000)
        if per_1000 > 1e-9 else None,  # a line flat or falling with the rate says nothing
        "loop_cores_for_1000_events_s": round(fixed + per_1000, 2), **measured,
    }


def main(argv: list[str] | None = None, settings: Settings | None = None) -> None:
    """``streamrec bench resources [--rates 0,100,250,400,1000] [--warmup S] [--duration S]
    [--cores N]``."""
    ap = argparse.ArgumentParser(prog="streamrec bench resources")
    ap.add_argument("--rates", default=RATES, help="source rates, events/s, in order (0: idle)")
    ap.add_argument("--warmup", type=float, default=WARMUP_S, metavar="S",
                    help="seconds at each rate before measuring")
    ap.add_argument("--duration", type=float, default=DURATION_S, metavar="S",
                    help="seconds measured at each rate")
    ap.add_argument("--cores", type=float, default=float(os.cpu_count() or 1),
                    help="cores the plan is for (default: this machine's)")
    args = ap.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",")]
    settings = settings or Settings.load()
    with EmbeddedRuntime(bench_settings(settings, "resources")) as runtime:
        rows = run(runtime.settings, runtime, rates, args.warmup, args.duration)
    # Runs other than the default go to their own file, not over the committed one.
    default = (rates == [float(r) for r in RATES.split(",")] and args.warmup == WARMUP_S
               and args.duration == DURATION_S)
    name = "resources" if default else "resources-rates" + "-".join(
        f"{r:g}" for r in rates) + f"-{args.warmup:g}s-{args.duration:g}s"
    report(name, {"cores_available": args.cores, "warmup_s": args.warmup,
                  "duration_s": args.duration, "rates": rows, **summarize(rows, args.cores)})

if __name__ == "__main__":
    main()
