"""``streamrec score``: keeps users' feeds fresh.

Triggers:

- a user's own events: the scorer consumes ``events`` in the consumer group ``GROUP_SCORER``
  (so scorers scale out by user partition). Users are coalesced for ``debounce_ms``. A user is
  re-scored once the ingest worker has applied the event (the user's ``last`` time in Redis has
  reached it), or after ``max_wait_ms`` regardless.
- a change of the served model on ``model-updates``: the newest announcement's ``serving``
  version (a promoted checkpoint, or what an operator promoted or rolled back to; checkpoints
  the trainer held back are never loaded) is loaded in the background, verified, swapped in;
  then the users active in the last ``active_window_s`` are re-scored, most recently active
  first.
- the fallback feed (items trending now) is refreshed every ``popular_every_s``.
- every user's neighbour list is rebuilt every ``neighbour_interval_s`` by one of the scorers
  (:mod:`streaming.serving.neighbour_job`, on a background thread).

Timings and limits are the ``serving`` settings. Counters go to ``P scorer:stats``
(``feeds_written``, ``feeds_by_model``, ``model_loads``, ``model_load_failures``,
``model_version``). Event-to-feed latencies (ms) go to ``P scorer:fresh`` (the last 20,000).
"""

from __future__ import annotations

import logging
import threading
import time

import confluent_kafka
import orjson
import redis
import torch

from models.spec import spec_for
from streaming.contract.names import GROUP_SCORER, GROUP_SCORER_MODELS, Keys
from streaming.contract.updates import ModelUpdate, ServedVersion
from streaming.errors import StreamrecError
from streaming.features.state import feature_config
from streaming.io.kafka import client_config
from streaming.io.redis_client import connect
from streaming.ops import health
from streaming.ops.memory import start_trimmer
from streaming.ops.metrics import ScorerMetrics, serve_configured
from streaming.serving.feed_store import FeedStore
from streaming.serving.neighbour_job import NeighbourJob
from streaming.serving.ranker import FeedRanker, ModelHolder
from streaming.settings import Settings

log = logging.getLogger(__name__)


class ServedModelHolder(ModelHolder):
    """A :class:`ModelHolder` that also goes back to an older version (a rollback)."""

    def switch(self, path: str, version: int) -> bool:
        """Serve ``version`` from ``path`` if it is not the one served, older or newer; on any
        failure keep serving the current model. True if swapped."""
        cur = self.current
        if cur is not None and cur.version == version:
            return False
        if cur is None or version > cur.version:
            return self.load(path, version)
        # Older: load into a fresh holder (same verification), then swap its model in.
        probe = ModelHolder(self.spec, self.serving)
        if not probe.load(path, version):
            self.failures += 1
            self.last_error = probe.last_error
            return False
        loaded = probe.current
        assert loaded is not None
        with self._lock:
            self._current = loaded
        self.loads += 1
        log.info("serving model v%d (rolled back from v%d)", version, cur.version)
        return True


class ScorerWorker:
    """One scorer process: follows model updates and users' events, keeps their feeds fresh.
    Built from settings alone; :meth:`run` until ``stop`` is set."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cfg = cfg = settings.serving
        # One intra-op thread: batches of ~500 rows gain nothing from more, and on a shared
        # machine extra threads only contend with the stream workers.
        torch.set_num_threads(1)
        self.client = connect(settings.redis)
        self.p = settings.redis.key_prefix
        self.keys = Keys(self.p)
        self.holder = ServedModelHolder(spec_for(**settings.model.spec_args()), cfg)
        self.ranker = FeedRanker(self.client, self.p, self.holder, serving=cfg,
                                 features=feature_config(settings))
        self.feeds = FeedStore(self.client, self.p, ttl_s=cfg.feed_ttl_s)
        self.pending: dict[str, tuple[int, float]] = {}  # user -> (event ts ms, first seen monotonic s)
        self.active: dict[str, float] = {}  # user -> last event (wall s)
        self._lock = threading.Lock()
        self.feeds_written = 0
        self.metrics = ScorerMetrics()

    # -- model updates ----------------------------------------------------------------------
    def _follow_models(self, stop: threading.Event) -> None:
        consumer = confluent_kafka.Consumer(client_config(self.settings.kafka, **{
            "group.id": GROUP_SCORER_MODELS, "enable.auto.commit": False}))
        topic = self.settings.topics.model_updates
        consumer.assign([confluent_kafka.TopicPartition(topic, 0, confluent_kafka.OFFSET_BEGINNING)])
        try:
            while not stop.is_set():
                target: ServedVersion | None = None
                # poll() returns at the first record; consume(n, t) would wait out t unless n
                # records came, which is the whole of a model update's latency budget here.
                first = consumer.poll(0.5)
                batch = [first, *consumer.consume(100, 0)] if first is not None else []
                for msg in batch:  # the newest record says what is served
                    if msg.error():
                        continue
                    try:
                        target = ModelUpdate.from_json(msg.value()).serving or target
                    except ValueError as exc:
                        log.error("model announcement at offset %d: %s", msg.offset(), exc)
                t0 = time.perf_counter()
                failures = self.holder.failures
                if target is not None and self.holder.switch(target.path, target.version):
                    self.metrics.stage.labels("model_load").observe(time.perf_counter() - t0)
                    self.metrics.model_loads.labels("ok").inc()
                    self.metrics.model_version.labels("scorer").set(target.version)
                    self._record({"model_version": target.version,
                                  "model_loads": self.holder.loads})
                    self._rescore_active()
                elif target is not None and self.holder.failures > failures:
                    self.metrics.model_loads.labels("failed").inc()
                    self._record({"model_load_failures": self.holder.failures})
        finally:
            consumer.close()

    def _record(self, fields: dict[str, int]) -> None:
        """Counters to ``P scorer:stats``; a Redis outage costs the update, not the loader
        thread (which would otherwise die and stop following models)."""
        try:
            self.client.hset(self.keys.scorer_stats, mapping=fields)
        except redis.RedisError as exc:
            self.metrics.redis_errors.labels("scorer").inc()
            log.warning("scorer stats not written: %s", exc)

    def _rescore_active(self) -> None:
        horizon = time.time() - self.cfg.active_window_s
        with self._lock:
            # Forget users inactive for longer than the window: without this the map grows
            # with every user ever seen (memory bounded by the active users, not all users).
            self.active = {u: t for u, t in self.active.items() if t >= horizon}
            users = sorted(((t, u) for u, t in self.active.items()), reverse=True)
            now = time.monotonic()
            for _, u in users:
                self.pending.setdefault(u, (0, now))

    def _build_neighbours(self, stop: threading.Event) -> None:
        """Run the neighbour job whenever no scorer has for ``neighbour_interval_s`` (its lock
        decides), until ``stop``; a failed run is logged and tried again next period."""
        job = NeighbourJob(self.client, self.keys, self.cfg)
        poll_s = min(self.cfg.neighbour_interval_s, 30.0)
        while not stop.is_set():
            try:
                job.run_if_due()
            except StreamrecError as exc:
                self.metrics.redis_errors.labels("scorer").inc()
                log.warning("neighbour lists not rebuilt: %s", exc)
            stop.wait(poll_s)

    # -- feeds ------------------------------------------------------------------------------
    def _refresh(self, budget_s: float, stop: threading.Event) -> None:
        """Re-score pending users, ``batch_users`` per forward pass, for at most ``budget_s``:
        the loop goes back to consuming (and to the stop flag) between cycles."""
        with self._lock:
            # Users with new events first, oldest trigger first (bounded latency even when the
            # scorer falls behind); then re-scores after a model update, most recent user first.
            order = sorted(self.pending.items(), key=lambda kv: (
                kv[1][0] == 0, kv[1][1] if kv[1][0] else -self.active.get(kv[0], 0.0)))
        started = time.monotonic()
        step = self.cfg.batch_users
        for start in range(0, len(order), step):
            if stop.is_set() or time.monotonic() - started > budget_s:
                break
            chunk = self._ready(order[start:start + step], started)
            if not chunk:
                continue
            lookups, reads = self.ranker.item_lookups, self.ranker.item_reads
            try:
                feeds = self.ranker.rank_many([u for u, _ in chunk])
            except StreamrecError as exc:
                self.metrics.redis_errors.labels("scorer").inc()
                log.warning("scoring %d users failed: %s", len(chunk), exc)
                continue
            finally:
                self.metrics.item_lookups.inc(self.ranker.item_lookups - lookups)
                self.metrics.item_reads.inc(self.ranker.item_reads - reads)
            done, settled, fresh_ms = [], [], []
            for (user, (event_ts, since)), feed in zip(chunk, feeds, strict=True):
                applied = feed is not None and (feed.source_event_ts_ms or 0) >= event_ts
                waited = (started - since) * 1000 >= self.cfg.max_wait_ms
                if not applied and not waited:
                    continue  # the ingest worker has not applied the user's event yet
                settled.append((user, event_ts))
                if feed is not None:
                    done.append(feed)
                    if event_ts:
                        fresh_ms.append(feed.generated_at_ms - event_ts)
            try:
                self.feeds.write_many(done)
                with self.client.pipeline(transaction=False) as pipe:
                    pipe.hincrby(self.keys.scorer_stats, "feeds_written", len(done))
                    # Feeds a model ranked (the rest had none loaded yet: candidate order).
                    pipe.hincrby(self.keys.scorer_stats, "feeds_by_model",
                                 sum(f.model_version is not None for f in done))
                    if fresh_ms:
                        pipe.lpush(self.keys.scorer_freshness, *fresh_ms)
                        pipe.ltrim(self.keys.scorer_freshness, 0, 19_999)
                    pipe.execute()
            except (StreamrecError, redis.RedisError) as exc:
                self.metrics.redis_errors.labels("scorer").inc()
                log.warning("writing %d feeds failed (kept pending): %s", len(done), exc)
                continue
            self.feeds_written += len(done)
            self.metrics.feeds.inc(len(done))
            stage = self.metrics.stage.labels("event_to_feed")
            for ms in fresh_ms:
                stage.observe(ms / 1000)
            with self._lock:
                for user, event_ts in settled:
                    # A newer event may have arrived meanwhile: then the user stays pending.
                    if self.pending.get(user, (None,))[0] == event_ts:
                        del self.pending[user]

    def _ready(self, chunk: list[tuple[str, tuple[int, float]]], now_mono: float
               ) -> list[tuple[str, tuple[int, float]]]:
        """The users in ``chunk`` worth scoring now: the ingest worker has applied their event
        (one ``HGET last`` each, pipelined: far cheaper than scoring a user too early), or they
        waited ``max_wait_ms``, or it is a model-update re-score (event time 0)."""
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for user, _ in chunk:
                    pipe.hget(self.keys.user(user), "last")
                lasts = pipe.execute()
        except redis.RedisError as exc:
            log.warning("reading users' last event time failed: %s", exc)
            return chunk
        return [(user, (ts, since)) for (user, (ts, since)), last in zip(chunk, lasts, strict=True)
                if ts == 0 or (last is not None and float(last) >= ts)
                or (now_mono - since) * 1000 >= self.cfg.max_wait_ms]

    def _refresh_popular(self) -> None:
        # Redis away (restarting, loading its AOF): keep the old fallback feed and carry on;
        # the next period tries again. Raising here would end the scorer.
        try:
            feed = self.ranker.popular_feed()
            if feed is not None:
                self.feeds.write(feed)
        except (StreamrecError, redis.RedisError) as exc:
            self.metrics.redis_errors.labels("scorer").inc()
            log.warning("fallback feed not refreshed: %s", exc)

    def run(self, stop: threading.Event) -> None:
        """Consume events and refresh feeds until ``stop`` is set, following model updates on a
        background thread; closes the consumers, the metrics endpoint and Redis on the way out."""
        loader = threading.Thread(target=self._follow_models, args=(stop,), name="model-loader",
                                  daemon=True)
        loader.start()
        neighbours = threading.Thread(target=self._build_neighbours, args=(stop,),
                                      name="neighbour-job", daemon=True)
        if self.cfg.neighbour_interval_s > 0:
            neighbours.start()
        server = serve_configured(self.metrics.registry, self.settings.runtime)
        trimmer = start_trimmer(self.settings.runtime.malloc_trim_interval_s)
        consumer = confluent_kafka.Consumer(client_config(self.settings.kafka, **{
            "group.id": GROUP_SCORER, "auto.offset.reset": "earliest", "enable.auto.commit": True,
            "session.timeout.ms": self.settings.kafka.session_timeout_ms,
        }))
        consumer.subscribe([self.settings.topics.events])
        debounce = self.cfg.debounce_ms / 1000
        last_popular = 0.0
        heartbeat = health.Heartbeat(self.client, self.p, "scorer")
        try:
            while not stop.is_set():
                if not heartbeat.beat(len(consumer.assignment())):
                    self.metrics.redis_errors.labels("scorer").inc()
                self.metrics.pending.set(len(self.pending))
                deadline = time.monotonic() + debounce
                while (left := deadline - time.monotonic()) > 0 and not stop.is_set():
                    for msg in consumer.consume(1000, left):
                        if msg.error():
                            self.metrics.kafka_errors.labels("scorer").inc()
                            continue
                        if msg.key() is None:
                            continue
                        self._note(msg)
                if self.pending:
                    self._refresh(budget_s=1.0, stop=stop)
                if time.monotonic() - last_popular >= self.cfg.popular_every_s:
                    self._refresh_popular()
                    last_popular = time.monotonic()
        finally:
            consumer.close()
            loader.join()
            if neighbours.is_alive():
                neighbours.join()
            if server is not None:
                server.close()
            if trimmer is not None:
                trimmer.set()
            self.client.close()

    def _note(self, msg: confluent_kafka.Message) -> None:
        try:
            doc = orjson.loads(msg.value())
            ts = int(doc["ts"])
            user = doc["user_id"]
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return  # invalid events are the ingest agent's to dead-letter
        if not isinstance(user, str):
            return
        with self._lock:
            old = self.pending.get(user)
            self.pending[user] = (max(ts, old[0]) if old else ts,
                                  old[1] if old else time.monotonic())
            self.active[user] = time.time()
