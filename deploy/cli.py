"""``streamrec`` command line: parse flags, build settings, run one subcommand, stop on signal.

Errors that streamrec raises on purpose (bad config, unreachable broker, malformed input) are
printed as one line ``streamrec: error: ...`` with exit code 2 (usage/config) or 1 (runtime),
never as a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

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
    up.add_argument("--workers", type=int, default=1, metavar="N",
                    help="stream-processing workers (one consumer group; default 1)")
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
                    help="`synthetic` (drifting generator) or a UCI Online Retail / OTTO log")
    ev.add_argument("--seed", type=int, default=7, help="generator, sampling and model seed")
    ev.add_argument("--events", type=int, metavar="N",
                    help="synthetic: events to generate; a log: keep its first N events")
    ev.add_argument("--via", choices=["in-process", "kafka"], default="in-process",
                    help="in-process: the ingest agent's processor called directly (fast); "
                         "kafka: events through the broker and a real worker process")
    ev.add_argument("--out", type=Path, default=Path("benchmarks/results"), metavar="DIR",
                    help="where prequential-<stream>.json/.png go (default benchmarks/results)")
    ev.add_argument("--rank-users", type=int, default=200, metavar="N",
                    help="users whose feeds are ranked per window (default 200)")
    ev.add_argument("--no-plots", action="store_true", help="skip the PNG")
    _global_options(ev)

    config = sub.add_parser("config", help="print the effective settings")
    config.add_argument("--markdown", action="store_true", help="as a Markdown table with env vars")
    _global_options(config)
    return parser


def load_settings(args: argparse.Namespace) -> Any:
    from streaming.settings import Settings, parse_assignments

    overrides = parse_assignments(args.set)
    for flag, key in (("kafka_bootstrap_servers", "kafka.bootstrap_servers"),
                      ("redis_url", "redis.url"), ("run_dir", "runtime.run_dir"),
                      ("log_level", "runtime.log_level"), ("debounce_ms", "serving.debounce_ms")):
        value = getattr(args, flag, None)
        if value is not None:
            overrides[key] = value
    return Settings.load(overrides=overrides)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event set by the first SIGINT/SIGTERM; a second SIGINT aborts at once."""
    stop = threading.Event()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        print(f"\nstreamrec: {signal.Signals(signum).name} received, shutting down "
              "(Ctrl-C again to abort)", file=sys.stderr, flush=True)
        stop.set()

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def cmd_up(args: argparse.Namespace, settings: Any) -> int:
    import os

    from deploy.up import UpOptions, run_up
    from streaming.settings import env_name

    key = "stream.attribution_window_ms"
    if not any(a.startswith(key + "=") for a in args.set) and env_name(key) not in os.environ:
        # The all-in-one runner should show examples and models within a minute: unless set
        # explicitly, label windows close after 60 s (synthetic clicks follow views within 60 s).
        settings = settings.with_values({key: "60000"})

    opts = UpOptions(duration_s=args.duration, rate=args.rate, replay=args.replay, seed=args.seed,
                     workers=args.workers, scorers=args.scorers, max_events=args.events,
                     dashboard=not args.no_dashboard)
    if opts.replay is not None and not opts.replay.is_file():
        raise ConfigError(f"--replay {opts.replay}: file not found")
    with stop_on_signals() as stop:
        summary = run_up(settings, opts, stop, say=lambda s: print(s, flush=True))
    print(orjson.dumps(summary).decode(), flush=True)
    return 0


def cmd_emit(args: argparse.Namespace, settings: Any) -> int:
    from deploy.embedded import with_running_endpoints
    from streaming.io.producer import EventProducer
    from streaming.sources.emit import emit_records
    from streaming.sources.files import read_records
    from streaming.sources.synthetic import SyntheticStream

    if args.synthetic:
        stream = SyntheticStream(seed=args.seed)
        rate = args.rate or 1000.0
        records: Any = ((f"synthetic:{n}", e) for n, e in enumerate(stream.live(rate)))
    else:
        records = read_records(args.file, args.format)
    settings = with_running_endpoints(settings)
    with stop_on_signals() as stop:
        timer = threading.Timer(args.duration or 0, stop.set)
        if args.duration:
            timer.start()
        try:
            producer = EventProducer(settings, topic=args.topic)
            report = emit_records(
                producer, records, rate=args.rate, limit=args.count, stop=stop,
                send_invalid=args.send_invalid,
                on_invalid=lambda m: print(f"invalid: {m}", file=sys.stderr, flush=True),
            )
            stats = producer.flush(60)
        finally:
            timer.cancel()
    summary = {**report.as_dict(), "delivered": stats.delivered, "topic": producer.topic}
    print(orjson.dumps(summary).decode(), flush=True)
    return 1 if args.strict and report.invalid else 0


def cmd_feed(args: argparse.Namespace, settings: Any) -> int:
    from deploy.embedded import with_running_endpoints
    from streaming.io.redis_client import connect
    from streaming.serving.feed_store import FeedStore

    settings = with_running_endpoints(settings)
    client = connect(settings.redis)
    try:
        feed = FeedStore(client, settings.redis.key_prefix).read(
            args.user_id, fallback=not args.no_fallback)
    finally:
        client.close()
    if feed is None:
        print(f"no feed for user {args.user_id!r} (and no trending fallback yet)", file=sys.stderr)
        return 1
    if args.json:
        print(feed.to_json().decode())
        return 0
    age_s = (time.time() * 1000 - feed.generated_at_ms) / 1000
    kind = "trending fallback" if feed.fallback else "personal"
    print(f"feed for {args.user_id} ({kind}, model v{feed.model_version}, "
          f"generated {age_s:.1f} s ago, {len(feed.items)} items)")
    for rank, item in enumerate(feed.items, 1):
        print(f"{rank:>3}. {item.item_id:<24} {item.score:8.4f}  {item.source}")
    return 0


def cmd_worker(args: argparse.Namespace, settings: Any) -> int:
    from deploy.embedded import with_running_endpoints
    from streaming.ingest.worker import run_worker

    return run_worker(with_running_endpoints(settings))


def cmd_score(args: argparse.Namespace, settings: Any) -> int:
    from deploy.embedded import with_running_endpoints
    from streaming.serving.worker import ScorerWorker

    worker = ScorerWorker(with_running_endpoints(settings))
    with stop_on_signals() as stop:
        worker.run(stop)
    return 0


def cmd_train(args: argparse.Namespace, settings: Any) -> int:
    import os

    from deploy.embedded import with_running_endpoints
    from trainer.main import launch, run_trainer

    settings = with_running_endpoints(settings)
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        extra = [f"--max-steps={args.max_steps}"] if args.max_steps else []
        extra += [f"--duration={args.duration}"] if args.duration else []
        return launch(settings, args.nproc, extra)
    run_trainer(settings, max_steps=args.max_steps, duration_s=args.duration)
    return 0


def cmd_bench(args: argparse.Namespace, settings: Any) -> int:
    import importlib

    root = Path(__file__).resolve().parent.parent
    if not (root / "benchmarks" / f"{args.name}.py").is_file():
        available = sorted(p.stem for p in (root / "benchmarks").glob("*.py")
                           if not p.stem.startswith("_") and p.stem not in {"common", "bare_faust"})
        raise ConfigError(f"no benchmark {args.name!r} in {root / 'benchmarks'}; "
                          f"available: {', '.join(available) or 'none'}")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    module = importlib.import_module(f"benchmarks.{args.name}")
    module.main(args.bench_args, settings)
    return 0


def cmd_topics(args: argparse.Namespace, settings: Any) -> int:
    from deploy.embedded import with_running_endpoints
    from streaming.io.kafka import KafkaAdmin, topic_specs

    settings = with_running_endpoints(settings)
    admin = KafkaAdmin(settings)
    admin.wait_ready(15)
    report = admin.ensure_topics(topic_specs(settings))
    for spec in topic_specs(settings):
        state = "created" if spec.name in report.created else "exists"
        print(f"{spec.name:<24} partitions={admin.partitions(spec.name)}  {state}")
    for name, (want, have) in report.mismatched.items():
        print(f"warning: {name} has {have} partitions, settings ask for {want}", file=sys.stderr)
    return 0


def cmd_eval(args: argparse.Namespace, settings: Any) -> int:
    from deploy.embedded import EmbeddedRuntime
    from trainer.evaluation.harness import EvalOptions
    from trainer.evaluation.main import run_eval, summary

    # Ctrl-C raises KeyboardInterrupt: the run stops where it is and the services stop with it.
    result = run_eval(settings, args.stream, services=EmbeddedRuntime, seed=args.seed,
                      via=args.via, events=args.events,
                      out_dir=args.out, plots=not args.no_plots,
                      opts=EvalOptions(rank_users=args.rank_users),
                      say=lambda s: print(s, file=sys.stderr, flush=True))
    print(orjson.dumps(summary(result)).decode(), flush=True)
    return 0


def cmd_config(args: argparse.Namespace, settings: Any) -> int:
    from streaming.settings import env_name

    if not args.markdown:
        for key, value in settings.redacted().items():
            print(f"{key} = {value!r}")
        return 0
    print("| setting | environment variable | default | meaning |")
    print("|---|---|---|---|")
    for key, _, f in type(settings)().items():
        default = f.default
        print(f"| `{key}` | `{env_name(key)}` | `{default!r}` | {f.metadata.get('doc', '')} |")
    return 0


def _print_lag(snap: Any, as_json: bool) -> None:
    if as_json:
        print(orjson.dumps(snap.as_dict()).decode(), flush=True)
        return
    print(f"{'GROUP':<18} {'TOPIC':<20} {'P':>3} {'LOG-END':>9} {'COMMITTED':>9} {'LAG':>7} "
          f"{'LAG-S':>7}  STATUS   NOTE")
    for p in snap.partitions:
        note = f"{p.anomaly} (raw offsets shown, lag clamped at 0)" if p.anomaly else ""
        committed = p.committed if p.committed >= 0 else "-"
        print(f"{p.group:<18} {p.topic:<20} {p.partition:>3} {p.log_end:>9} {committed:>9} "
              f"{p.lag:>7} {p.lag_seconds:>7.1f}  {snap.status.get(p.group, 'OK'):<8} {note}")
    for group, g in snap.by_group().items():
        print(f"{group}: lag {g['lag']}, oldest {g['lag_seconds']:.1f} s, {g['status']}")
    print(flush=True)


def cmd_lag(args: argparse.Namespace, settings: Any) -> int:
    from deploy.embedded import with_running_endpoints
    from streaming.ops.lag_monitor import LagMonitor
    from streaming.ops.metrics import serve

    settings = with_running_endpoints(settings)
    monitor = LagMonitor(settings, interval_s=args.interval)
    try:
        if args.serve is not None:
            server = serve(monitor.metrics.registry, args.serve, settings.runtime.bind_host)
            print(f"lag exporter on http://{settings.runtime.bind_host}:{server.port}/metrics",
                  flush=True)
            try:
                with stop_on_signals() as stop:
                    monitor.run(stop)
            finally:
                server.close()
            return 0
        with stop_on_signals() as stop:
            while True:
                _print_lag(monitor.sample(), args.json)
                if not args.watch or stop.wait(args.watch):
                    break
    finally:
        monitor.close()
    return 0


def cmd_dashboard(args: argparse.Namespace, settings: Any) -> int:
    import json

    from deploy.dashboard import Dashboard
    from deploy.embedded import endpoints_path, with_running_endpoints

    settings = with_running_endpoints(settings)

    def metrics_urls() -> dict[str, str]:
        try:
            return dict(json.loads(endpoints_path(settings).read_text()).get("metrics") or {})
        except (OSError, ValueError):
            return {}

    dashboard = Dashboard(settings, metrics_urls, port=args.port).start()
    print(f"dashboard {dashboard.url} (read-only; Ctrl-C to stop)", flush=True)
    try:
        with stop_on_signals() as stop:
            stop.wait()
    finally:
        dashboard.close()
    return 0


COMMANDS = {"up": cmd_up, "emit": cmd_emit, "feed": cmd_feed, "worker": cmd_worker,
            "bench": cmd_bench, "train": cmd_train, "score": cmd_score, "topics": cmd_topics,
            "lag": cmd_lag, "dashboard": cmd_dashboard, "config": cmd_config, "eval": cmd_eval}


def main(argv: list[str] | None = None) -> int:
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
