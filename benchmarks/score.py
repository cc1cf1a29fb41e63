"""bench score: one scorer with the default model (untrained weights, same shapes).

- candidates_per_s: users ranked as the scorer worker does (``--batch-users`` per forward pass,
  up to 500 candidates each, shared lists cached for 1 s, item state until it changes), feeds
  written, candidates per second; after one warm-up batch of other users, as the model-only
  ceiling is measured after a warm-up call;
- cold_batch_ms: that warm-up batch (first calls, empty item cache);
- refresh_p50_ms / refresh_p99_ms: one user's refresh on its own, including the state and
  candidate reads, feature computation, the model, and the feed write;
- feed_read_p99_ms: FeedStore.read of a random user's feed;
- model_only_candidates_per_s: the model's forward alone on the same 500-row batches (same run),
  the ceiling for candidates_per_s;
- neighbour_job_s / neighbour_users: one run of the neighbour job over the filled state (every
  user's list, which the ranking then reads: the ``neighbours`` source and ``nb_score``).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import fresh_topics, percentile, report, services
from models.checkpoint import Manifest, write_checkpoint
from models.dlrm import StreamRecModel
from models.spec import DEFAULT_SPEC
from streaming.contract.names import Keys
from streaming.ingest.processor import RawMessage, build_processor
from streaming.io.redis_client import connect
from streaming.serving.feed_store import FeedStore
from streaming.serving.neighbour_job import NeighbourJob
from streaming.serving.ranker import FeedRanker, ModelHolder
from streaming.settings import Settings
from streaming.sources.synthetic import SyntheticStream


def fill_state(settings: Settings, n_events: int) -> None:
    """Run synthetic events through the real batch processor (features, co-visitation, ...)."""
    events = list(SyntheticStream(3).events(int(time.time() * 1000) - 3_600_000, rate=50.0,
                                            limit=n_events))

    async def run() -> None:
        processor, close = build_processor(settings)
        offsets: dict[int, int] = {}
        for start in range(0, len(events), 500):
            by_partition: dict[int, list[RawMessage]] = {}
            for e in events[start:start + 500]:
                p = sum(e.user_id.encode()) % 4
                offsets[p] = offsets.get(p, -1) + 1
                by_partition.setdefault(p, []).append(RawMessage(offsets[p], e.key, e.to_json()))
            for p, msgs in by_partition.items():
                await processor.process(p, msgs)
        await close()

    asyncio.run(run())


def main(argv: list[str] | None = None, settings: Settings | None = None) -> None:
    ap = argparse.ArgumentParser(prog="streamrec bench score")
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--batch-users", type=int, default=32)
    ap.add_argument("--events", type=int, default=30_000)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    with services(settings or Settings.load()) as running, tempfile.TemporaryDirectory() as ckpt:
        s = fresh_topics(running)
        fill_state(s, args.events)
        model = StreamRecModel(DEFAULT_SPEC)
        path = write_checkpoint(Path(ckpt), model.state_dict(),
                                Manifest(1, 0, 0, 0, {}, {}, DEFAULT_SPEC.digest()), keep=1)
        holder = ModelHolder()
        assert holder.load(path, 1)
        client = connect(s.redis)
        job = NeighbourJob(client, Keys(s.redis.key_prefix), s.serving).run()
        ranker = FeedRanker(client, s.redis.key_prefix, holder, serving=s.serving)
        feeds = FeedStore(client, s.redis.key_prefix)
        users = [f"u{i}" for i in range(args.users)]
        # Warmed like the model-only ceiling below: one batch of other users first (first
        # calls, script loads, the item cache a running scorer has). Its time is reported.
        t0 = time.perf_counter()
        ranker.rank_many([f"u{i}" for i in range(args.users, args.users + args.batch_users)])
        cold_batch_ms = (time.perf_counter() - t0) * 1000
        candidates = 0
        t0 = time.perf_counter()
        for start in range(0, len(users), args.batch_users):
            written = [f for f in ranker.rank_many(users[start:start + args.batch_users]) if f]
            feeds.write_many(written)
            candidates += ranker.last_candidates
        elapsed = time.perf_counter() - t0
        refresh_ms = []
        for user in users[:300]:
            t = time.perf_counter()
            feed = ranker.rank(user)
            if feed is not None:
                feeds.write(feed)
            refresh_ms.append((time.perf_counter() - t) * 1000)
        # Model alone on a 500-row batch of the same shape.
        reads = ranker.read_user(users[0], int(time.time() * 1000))
        items = [f"i{k}" for k in range(500)]
        batch = ranker.model_inputs(reads, items, int(time.time() * 1000))
        loaded = holder.current
        assert loaded is not None
        with torch.inference_mode():
            loaded.model(batch.dense, batch.sparse)
            t = time.perf_counter()
            for _ in range(50):
                loaded.model(batch.dense, batch.sparse)
            model_rate = 50 * 500 / (time.perf_counter() - t)
        read_ms = []
        for _ in range(5000):
            u = random.choice(users)
            t = time.perf_counter()
            feeds.read(u)
            read_ms.append((time.perf_counter() - t) * 1000)
        client.close()
    report("score", {
        "candidates_per_s": round(candidates / elapsed, 1),
        "model_only_candidates_per_s": round(model_rate, 1),
        "ratio_vs_model_only": round(candidates / elapsed / model_rate, 3),
        "cold_batch_ms": round(cold_batch_ms, 1),
        "refresh_p50_ms": round(percentile(refresh_ms, 50), 2),
        "refresh_p99_ms": round(percentile(refresh_ms, 99), 2),
        "feed_read_p99_ms": round(percentile(read_ms, 99), 3),
        "users": len(users),
        "batch_users": args.batch_users,
        "candidates_per_user": round(candidates / max(1, len(users)), 1),
        "neighbour_job_s": job.elapsed_s,
        "neighbour_users": job.users,
        "targets": {"candidates_per_s": 100_000, "refresh_p99_ms": 50, "feed_read_p99_ms": 1},
    })


if __name__ == "__main__":
    main()
