"""``streamrec`` command line: parse flags, build settings, dispatch to one subcommand
(:mod:`deploy.commands`), which runs until done or stopped by a signal.

Errors that streamrec raises on purpose (bad config, unreachable broker, malformed input) are
printed as one line ``streamrec: error: ...`` with exit code 2 (usage/config) or 1 (runtime),
never as a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from deploy.commands import COMMANDS
from streaming.errors import ConfigError, StreamrecError

log = logging.getLogger("streamrec")


def _global_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connection and settings (override STREAMREC_* environment)")
    g.add_argument("--kafka-bootstrap-servers", metavar="HOST:PORT",
                   help="Kafka to use (default: $KAFKA_BOOTSTRAP_SERVERS, else embedded)")
    g.add_argument("--redis-url", metavar="URL",
                   help="Redis to use (default: $REDIS_URL, else embedded)")
    g.add_argument("--run-dir", metavar="DIR", help="runtime directory (default .streamrec)")
    g.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override any setting, e.g. --set topics.events_partitions=8")
    g.add_argument("--log-level", metavar="LEVEL", help="DEBUG, INFO, WARNING, ERROR")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="streamrec",
        description="Streaming near-real-time recommender (Kafka + Faust + TorchRec + Redis).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="run the whole loop (embedded broker + Redis by default)")
    up.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    up.add_argument("--rate", type=float, default=200.0, metavar="N",
                    help="source events per second (default 200)")
    up.add_argument("--replay", type=Path, metavar="PATH",
                    help="replay a JSONL/CSV event file instead of synthetic events")
    up.add_argument("--seed", type=int, default=0, help="synthetic generator seed")
    up.add_argument("--events", type=int, metavar="N",
                    help="stop the source after N events; everything else keeps running")
    up.add_argument("--no-dashboard", action="store_true", help="do not serve the dashboard")
    up.add_argument("--fresh", action="store_true",
                    help="start from an empty data directory (= --set runtime.fresh=true)")
    up.add_argument("--workers", type=int, default=1, metavar="N",
                    help="stream-processing workers (one consumer group; default 1)")
    up.add_argument("--trainer-ranks", type=int, default=1, metavar="N",
                    help="trainer ranks (torchrun; default 1)")
    up.add_argument("--scorers", type=int, default=1, metavar="N",
                    help="scorer processes (one consumer group; default 1)")
    _global_options(up)

    emit = sub.add_parser("emit", help="send events to Kafka from a file or a generator")
    src = emit.add_mutually_exclusive_group(required=True)
    src.add_argument("--file", metavar="PATH", help="JSONL or CSV file (.gz ok, - = stdin)")
    src.add_argument("--synthetic", action="store_true", help="generate synthetic events")
    emit.add_argument("--format", choices=["auto", "jsonl", "csv"], default="auto")
    emit.add_argument("--rate", type=float, metavar="N", help="events per second (default: max)")
    emit.add_argument("--count", type=int, metavar="N", help="stop after N events")
    emit.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    emit.add_argument("--seed", type=int, default=0, help="synthetic generator seed")
    emit.add_argument("--topic", help="target topic (default: topics.events)")
    emit.add_argument("--send-invalid", action="store_true",
                      help="also send records that fail validation (to exercise the DLQ)")
    emit.add_argument("--strict", action="store_true",
                      help="exit with status 1 if any record was invalid")
    _global_options(emit)

    feed = sub.add_parser("feed", help="print a user's live feed from Redis")
    feed.add_argument("user_id")
    feed.add_argument("--json", action="store_true", help="print the raw feed document")
    feed.add_argument("--no-fallback", action="store_true",
                      help="do not fall back to the trending-items feed")
    _global_options(feed)

    worker = sub.add_parser("worker", help="run a stream-processing worker (Faust)")
    _global_options(worker)

    score = sub.add_parser("score", help="run a scorer worker (keeps users' feeds fresh)")
    score.add_argument("--debounce-ms", type=int, metavar="MS",
                       help="coalesce a user's events (= --set serving.debounce_ms=MS)")
    _global_options(score)

    train = sub.add_parser("train", help="run the continuous trainer (sharded DLRM)")
    train.add_argument("--nproc", type=int, default=1, metavar="N",
                       help="ranks on this machine (launched with torchrun); default 1")
    train.add_argument("--max-steps", type=int, metavar="N", help="stop after N steps")
    train.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    _global_options(train)

    bench = sub.add_parser("bench", help="run a benchmark from benchmarks/ (JSON result)")
    bench.add_argument("name", help="benchmark name, e.g. ingest")
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments for the benchmark")
    _global_options(bench)

    topics = sub.add_parser("topics", help="create the topics (idempotent) and list them")
    _global_options(topics)

    lag = sub.add_parser("lag", help="consumer lag per group/topic/partition, Burrow-style status")
    lag.add_argument("--json", action="store_true", help="one JSON document per sample")
    lag.add_argument("--watch", type=float, metavar="S",
                     help="sample every S seconds until Ctrl-C (status needs a window of samples)")
    lag.add_argument("--serve", type=int, metavar="PORT",
                     help="run as the lag exporter: /metrics on PORT (runtime.bind_host)")
    lag.add_argument("--interval", type=float, default=5.0, metavar="S",
                     help="sampling interval with --serve (default 5)")
    _global_options(lag)

    dash = sub.add_parser("dashboard", help="serve the live dashboard (read-only)")
    dash.add_argument("--port", type=int, help="default: runtime.dashboard_port")
    _global_options(dash)

    ev = sub.add_parser("eval", help="prequential evaluation on a replayed stream (JSON + plots)")
    ev.add_argument("--stream", required=True, metavar="synthetic|PATH",
                    help="`synthetic` (drifting generator), a UCI Online Retail / OTTO log, or "
                         "any event file in the contract's format (JSONL/CSV, .gz ok: what "
                         "`streamrec emit --file` reads)")
    ev.add_argument("--seed", type=int, default=7, help="generator, sampling and model seed")
    ev.add_argument("--events", type=int, metavar="N",
                    help="synthetic: events to generate; a log: keep its first N events")
    ev.add_argument("--via", choices=["in-process", "kafka"], default="in-process",
                    help="in-process: the ingest agent's processor called directly (fast); "
                         "kafka: events through the broker and a real worker process")
    ev.add_argument("--out", type=Path, default=Path("benchmarks/results"), metavar="DIR",
                    help="where prequential-<stream>.json/.png go (default benchmarks/results)")
    ev.add_argument("--rank-users", type=int, default=2000, metavar="N",
                    help="users whose feeds are ranked per window: a seeded sample of N of those "
                         "who interact in it (default 2000; 0 = all of them)")
    ev.add_argument("--tick", metavar="DURATION",
                    help="events fed and a trainer step taken per tick of event time, e.g. 1h "
                         "(default: the stream's profile, or window / 100 for other logs)")
    ev.add_argument("--window", metavar="DURATION",
                    help="metrics per window; feeds ranked at each window's start, e.g. 1d "
                         "(default: the stream's profile, or the log's span / 20)")
    ev.add_argument("--half-life", metavar="DURATION",
                    help="half-life of popularity, trending and buy-again, e.g. 7d (default: "
                         "the stream's profile, or the window)")
    ev.add_argument("--knn-half-life", metavar="DURATION",
                    help="half-life of the counts behind the user_knn baseline (the user's and "
                         "similar users' items), e.g. 120d (default: 16 windows)")
    ev.add_argument("--warmup", type=float, default=0.2, metavar="SHARE",
                    help="share of event time before the frozen model is fixed and overall "
                         "metrics start (default 0.2)")
    ev.add_argument("--label-mode", choices=["implicit", "exposure"],
                    help="default: the stream's profile; other logs: implicit without views, "
                         "else exposure")
    ev.add_argument("--no-plots", action="store_true", help="skip the PNG")
    ev.add_argument("--dump-candidates", type=Path, metavar="DIR",
                    help="also write every ranked candidate's dense features, model scores and "
                         "label to DIR/candidates-<stream>.npz, for offline study")
    _global_options(ev)

    model = sub.add_parser("model", help="checkpoints and their verdicts; promote or roll back "
                           "the served model")
    model_sub = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    listing = model_sub.add_parser("list", help="versions, metrics, verdicts, which is served")
    listing.add_argument("--json", action="store_true", help="one JSON document")
    _global_options(listing)
    promote = model_sub.add_parser("promote", help="serve VERSION (overrides a held-back verdict)")
    promote.add_argument("version", type=int, metavar="VERSION")
    _global_options(promote)
    rollback = model_sub.add_parser("rollback", help="serve the previously served version again")
    _global_options(rollback)

    config = sub.add_parser("config", help="print the effective settings")
    config.add_argument("--markdown", action="store_true", help="as a Markdown table with env vars")
    _global_options(config)
    return parser


def load_settings(args: argparse.Namespace) -> Any:
    """Settings from the environment, with the command line's flags and ``--set`` on top."""
    from streaming.settings import Settings, parse_assignments

    overrides = parse_assignments(args.set)
    if getattr(args, "fresh", False):
        overrides["runtime.fresh"] = "true"
    for flag, key in (("kafka_bootstrap_servers", "kafka.bootstrap_servers"),
                      ("redis_url", "redis.url"), ("run_dir", "runtime.run_dir"),
                      ("log_level", "runtime.log_level"), ("debounce_ms", "serving.debounce_ms")):
        value = getattr(args, flag, None)
        if value is not None:
            overrides[key] = value
    return Settings.load(overrides=overrides)


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; returns the exit code (2 configuration error, 1 runtime error)."""
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args)
        # Third-party libraries (torchrec, fbgemm) log at INFO on the root logger; keep the root
        # at WARNING and give our own packages the configured level.
        logging.basicConfig(
            level=logging.WARNING,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        for name in ("streaming", "models", "trainer", "deploy", "streamrec", "benchmarks"):
            logging.getLogger(name).setLevel(settings.runtime.log_level.upper())
        if settings.runtime.log_level.upper() != "DEBUG":
            # librdkafka logs routine disconnects at INFO; keep its warnings and errors.
            logging.getLogger("streamrec.librdkafka").setLevel(logging.WARNING)
        return COMMANDS[args.command](args, settings)
    except ConfigError as exc:
        print(f"streamrec: error: {exc}", file=sys.stderr)
        return 2
    except StreamrecError as exc:
        print(f"streamrec: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
