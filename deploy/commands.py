"""What each ``streamrec`` subcommand does, once :mod:`deploy.cli` has parsed its flags and
built the settings: each builds its role's objects, runs them, and stops on SIGINT/SIGTERM.
Heavy imports happen inside the command, so ``streamrec feed`` does not load torch."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from streaming.errors import ConfigError


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
    """``streamrec up``: the whole loop on the embedded (or configured) services."""
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
                     trainer_ranks=args.trainer_ranks,
                     dashboard=not args.no_dashboard)
    if opts.replay is not None and not opts.replay.is_file():
        raise ConfigError(f"--replay {opts.replay}: file not found")
    with stop_on_signals() as stop:
        summary = run_up(settings, opts, stop, say=lambda s: print(s, flush=True))
    print(orjson.dumps(summary).decode(), flush=True)
    return 0


def cmd_emit(args: argparse.Namespace, settings: Any) -> int:
    """``streamrec emit``: validate and send events from a file or the generator."""
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
    """``streamrec feed``: print a user's feed (or the trending fallback)."""
    from deploy.embedded import with_running_endpoints
    from streaming import FeedReader

    with FeedReader(with_running_endpoints(settings)) as feeds:
        feed = feeds.read(args.user_id, fallback=not args.no_fallback)
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
    """``streamrec worker``: one stream-processing (ingest) worker."""
    from deploy.embedded import with_running_endpoints
    from streaming.ingest.worker import run_worker

    return run_worker(with_running_endpoints(settings))


def cmd_score(args: argparse.Namespace, settings: Any) -> int:
    """``streamrec score``: one scorer worker, until SIGINT/SIGTERM."""
    from deploy.embedded import with_running_endpoints
    from streaming.serving.worker import ScorerWorker

    worker = ScorerWorker(with_running_endpoints(settings))
    with stop_on_signals() as stop:
        worker.run(stop)
    return 0


def cmd_train(args: argparse.Namespace, settings: Any) -> int:
    """``streamrec train``: the continuous trainer, one process or ``--nproc`` ranks."""
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
    """``streamrec bench NAME``: run ``benchmarks/NAME.py`` with these settings."""
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
    """``streamrec topics``: create the topics idempotently and list them."""
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
    """``streamrec eval``: a prequential evaluation on embedded services; prints the summary."""
    from deploy.embedded import EmbeddedRuntime
    from trainer.evaluation.harness import EvalOptions
    from trainer.evaluation.main import run_eval, summary
    from trainer.evaluation.profiles import TimeScales, parse_duration_ms

    if not 0.0 <= args.warmup < 1.0:
        raise ConfigError(f"--warmup {args.warmup}: a share of event time in [0, 1)")
    if args.rank_users < 0:
        raise ConfigError(f"--rank-users {args.rank_users}: 0 (all) or more")
    scales = TimeScales(
        tick_ms=parse_duration_ms(args.tick, "--tick") if args.tick else None,
        window_ms=parse_duration_ms(args.window, "--window") if args.window else None,
        half_life_ms=parse_duration_ms(args.half_life, "--half-life") if args.half_life else None,
        label_mode=args.label_mode)
    if not settings.runtime.data_dir:
        # Its own emptied data directory: an evaluation never shares a broker's logs or Redis
        # with a running `streamrec up` (whose data directory is locked).
        settings = settings.with_values({
            "runtime.data_dir": str(settings.runtime.run_path / "eval" / "data"),
            "runtime.fresh": "true"})
    # Ctrl-C raises KeyboardInterrupt: the run stops where it is and the services stop with it.
    result = run_eval(settings, args.stream, services=EmbeddedRuntime, seed=args.seed,
                      via=args.via, events=args.events,
                      out_dir=args.out, plots=not args.no_plots,
                      opts=EvalOptions(rank_users=args.rank_users, warmup_share=args.warmup,
                                       dump_dir=args.dump_candidates,
                                       knn_half_life_ms=parse_duration_ms(
                                           args.knn_half_life, "--knn-half-life")
                                       if args.knn_half_life else None),
                      scales=scales, say=lambda s: print(s, file=sys.stderr, flush=True))
    print(orjson.dumps(summary(result)).decode(), flush=True)
    return 0


def cmd_config(args: argparse.Namespace, settings: Any) -> int:
    """``streamrec config``: the effective settings (secrets redacted), or a Markdown table."""
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
    """``streamrec lag``: consumer lag once, every ``--watch`` seconds, or as an exporter."""
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
    """``streamrec dashboard``: serve the live dashboard until stopped."""
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


def _print_models(rows: list[dict[str, Any]]) -> None:
    print(f"{'VERSION':>7}  {'STATUS':<15} {'KIND':<14} {'CREATED':<19} {'STEP':>7} {'EXAMPLES':>9} "
          f"{'PREQ-AUC':>8} {'N':>5} {'LL':>7} {'LL-SERVED':>9} {'AUC':>6} {'AUC-SERVED':>10}  "
          "REASON")

    def num(x: Any, spec: str) -> str:
        return "-" if x is None else format(x, spec)

    for r in rows:
        if "error" in r:
            print(f"{r['version']:>7}  unreadable: {r['error']}")
            continue
        v = r.get("verdict") or {}
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["created_at_ms"] / 1000)) \
            if r.get("created_at_ms") else "(not on disk)"
        print(f"{r['version']:>7}  {r['status']:<15} {r.get('kind', '-'):<14} {created:<19} "
              f"{num(r.get('step'), 'd'):>7} "
              f"{num(r.get('examples_seen'), 'd'):>9} {num(r.get('prequential_auc'), '.4f'):>8} "
              f"{num(v.get('n'), 'd'):>5} {num(v.get('candidate_logloss'), '.4f'):>7} "
              f"{num(v.get('served_logloss'), '.4f'):>9} {num(v.get('candidate_auc'), '.4f'):>6} "
              f"{num(v.get('served_auc'), '.4f'):>10}  {v.get('reason', '')}")


def cmd_model(args: argparse.Namespace, settings: Any) -> int:
    """``streamrec model list | promote VERSION | rollback``: what is served and why; operator
    announcements on ``model-updates`` (scorers follow them within a second)."""
    from deploy.embedded import with_running_endpoints
    from trainer import announcements

    settings = with_running_endpoints(settings)
    if args.model_command == "list":
        rows = announcements.model_table(settings)
        if args.json:
            print(orjson.dumps(rows).decode())
        elif not rows:
            print(f"no checkpoints in {settings.trainer.checkpoint_dir} and nothing announced")
        else:
            _print_models(rows)
        return 0
    if args.model_command == "promote":
        update, before = announcements.promote(settings, args.version)
    else:
        update, before = announcements.rollback(settings)
    was = before.serving if before is not None else None
    if update is None:
        print(f"v{args.version} is already served")
        return 0
    print(f"{update.action}: scorers now serve v{update.version} (was "
          f"{f'v{was.version}' if was else 'nothing'}); announced on "
          f"{settings.topics.model_updates}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace, Any], int]] = {
    "up": cmd_up, "emit": cmd_emit, "feed": cmd_feed, "worker": cmd_worker, "bench": cmd_bench,
    "train": cmd_train, "score": cmd_score, "topics": cmd_topics, "lag": cmd_lag,
    "dashboard": cmd_dashboard, "config": cmd_config, "eval": cmd_eval, "model": cmd_model,
}
