"""bench freshness: `streamrec up` on the embedded stack at a fixed event rate; event time ->
feed written latency (p50/p99) as the scorer records it, plus what the run's summary reports.

The measurement starts when the scorer serves the trainer's first model (``wait_for_model``):
the duration, the counters and the latencies are those of feeds ranked by a live model, and
``feeds_by_model`` says how many of them a model ranked. ``events_per_s`` is what the worker
processed in that window (what was really sustained, not what the source tried)."""

from __future__ import annotations

import argparse
import tempfile
import threading

from benchmarks.common import bench_settings, report
from deploy.up import UpOptions, run_up
from streaming.settings import Settings

RATE, DURATION_S = 1000.0, 60.0  # the target rate; the measured window


def main(argv: list[str] | None = None, settings: Settings | None = None) -> None:
    """``streamrec bench freshness [--rate N] [--duration S] [--scorers N]``."""
    ap = argparse.ArgumentParser(prog="streamrec bench freshness")
    ap.add_argument("--rate", type=float, default=RATE)
    ap.add_argument("--duration", type=float, default=DURATION_S)
    ap.add_argument("--scorers", type=int, default=1)
    args = ap.parse_args(argv)
    base = bench_settings(settings or Settings.load(), "freshness")
    with tempfile.TemporaryDirectory() as ckpt:
        # Label windows of 10 s (not 30 min) and a publish every 10 s: the first model comes
        # within a minute instead of after the first half hour of views.
        summary = run_up(base.with_values({"trainer.checkpoint_dir": ckpt,
                                           "stream.attribution_window_ms": "10000",
                                           "stream.allowed_lateness_ms": "1000",
                                           "trainer.publish_interval_s": "10"}),
                         UpOptions(duration_s=args.duration, rate=args.rate,
                                   scorers=args.scorers, wait_for_model=True), threading.Event(),
                         say=lambda _: None)
    elapsed = summary["duration_s"]
    # Runs other than the default go to their own file, not over the committed one.
    default = (args.rate, args.duration, args.scorers) == (RATE, DURATION_S, 1)
    name = "freshness" if default else \
        f"freshness-rate{args.rate:g}-scorers{args.scorers}-{args.duration:g}s"
    report(name, {
        "events_per_s": round(summary["processed"] / elapsed, 1),
        "source_rate_per_s": args.rate,
        "event_to_feed_p50_ms": summary["freshness_ms"]["p50"],
        "event_to_feed_p99_ms": summary["freshness_ms"]["p99"],
        "feeds_written": summary["feeds_written"],
        "feeds_by_model": summary["feeds_by_model"],
        "model_version": summary["model_version"],
        "scorers": args.scorers,
        "lag": summary["lag"],
        "targets": {"events_per_s": 1000, "event_to_feed_p99_ms": 2000},
    })


if __name__ == "__main__":
    main()
