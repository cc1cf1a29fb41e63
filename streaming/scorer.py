"""Scoring users' candidates with the newest model and writing their feeds.

``ModelHolder`` loads a published checkpoint (verified: sha256, spec digest,
``weights_only``) into a plain ``StreamRecModel`` and swaps it in atomically; a failed load keeps
the previous model. ``FeedRanker`` reads a user's state and candidates from Redis, builds model
inputs with :func:`streaming.features.feature_values` and :class:`models.batch.BatchBuilder` (the
code that built the training examples: no training/serving skew), scores them in one batch and
keeps the top K.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import torch

from models.batch import BatchBuilder
from models.checkpoint import load_checkpoint
from models.dlrm import StreamRecModel
from models.spec import DEFAULT_SPEC, FeatureSpec
from streaming.candidates import CandidateReads, generate, top_categories
from streaming.errors import CorruptCheckpoint, StoreError
from streaming.features import DEFAULT_FEATURES, FeatureConfig, feature_matrix, parse_recent
from streaming.feeds import POPULAR, Feed, FeedItem
from streaming.state_store import as_text, parse_state_hash

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LoadedModel:
    version: int
    model: StreamRecModel
    path: str


class ModelHolder:
    def __init__(self, spec: FeatureSpec = DEFAULT_SPEC) -> None:
        self.spec = spec
        self._current: LoadedModel | None = None
        self._lock = threading.Lock()
        self.loads = 0
        self.failures = 0
        self.last_error = ""

    @property
    def current(self) -> LoadedModel | None:
        return self._current

    def load(self, path: str | Path, version: int) -> bool:
        """Load, verify and swap in; on any failure keep serving the previous model."""
        cur = self._current
        if cur is not None and version <= cur.version:
            return False
        try:
            manifest, state = load_checkpoint(Path(path), self.spec.digest())
            model = StreamRecModel(self.spec)
            model.load_state_dict(state)
            model.eval()
        except (CorruptCheckpoint, RuntimeError, OSError) as exc:
            self.failures += 1
            self.last_error = str(exc)
            log.error("model v%d not loaded, still serving v%s: %s", version,
                      cur.version if cur else None, exc)
            return False
        with self._lock:
            self._current = LoadedModel(manifest.version, model, str(path))
        self.loads += 1
        log.info("serving model v%d", manifest.version)
        return True


class FeedRanker:
    def __init__(self, client: redis.Redis, key_prefix: str, holder: ModelHolder, *,
                 feed_size: int = 50, candidates: int = 500,
                 features: FeatureConfig = DEFAULT_FEATURES, item_cache_s: float = 1.0) -> None:
        self.r = client
        # Consecutive users share most candidates (popular, category, co-visited items): item
        # state read within the last ``item_cache_s`` seconds is reused.
        self.item_cache_s = item_cache_s
        self._items: dict[str, tuple[float, dict[str, Any]]] = {}
        self.last_candidates = 0
        self.p = key_prefix
        self.holder = holder
        self.feed_size = feed_size
        self.n_candidates = candidates
        self.fc = features
        self.builder = BatchBuilder(holder.spec)

    def _zlist(self, raw: list[tuple[bytes, float]]) -> list[tuple[str, float]]:
        return [(as_text(m), float(s)) for m, s in raw]

    def read_user(self, user_id: str, now_ms: int) -> tuple[dict[str, Any], list[tuple[str, int]],
                                                            CandidateReads]:
        p = self.p
        try:
            with self.r.pipeline(transaction=False) as pipe:
                pipe.hgetall(f"{p}u:{user_id}")
                pipe.lrange(f"{p}ur:{user_id}", 0, self.fc.recent_items - 1)
                pipe.zrange(f"{p}ub:{user_id}", 0, -1)
                pipe.zrevrange(f"{p}pop", 0, 199, withscores=True)
                pipe.zrevrange(f"{p}new", 0, 49, withscores=True)
                user_raw, recent_raw, bought, popular, new = pipe.execute()
            user = parse_state_hash(user_raw.items())
            recent = parse_recent([as_text(x) for x in recent_raw])
            recent_items = list(dict.fromkeys(i for i, _ in recent))[:5]
            cats = top_categories(user, now_ms, self.fc.affinity_half_life_ms, 3)
            with self.r.pipeline(transaction=False) as pipe:
                for item in recent_items:
                    pipe.zrevrange(f"{p}cv:{item}", 0, 49, withscores=True)
                for cat in cats:
                    pipe.zrevrange(f"{p}ci:{cat}", 0, 99, withscores=True)
                res = pipe.execute()
        except redis.RedisError as exc:
            raise StoreError(f"Redis read for user {user_id!r} failed: {exc}") from None
        reads = CandidateReads(
            recent=recent_items,
            covisit={i: self._zlist(r) for i, r in zip(recent_items, res, strict=False)},
            by_category={c: self._zlist(r) for c, r in
                         zip(cats, res[len(recent_items):], strict=True)},
            new_items=self._zlist(new), popular=self._zlist(popular),
            purchased={as_text(b) for b in bought},
        )
        return user, recent, reads

    def read_items(self, items: list[str]) -> list[dict[str, Any]]:
        now = time.monotonic()
        cache = self._items
        missing = [i for i in items if i not in cache or now - cache[i][0] > self.item_cache_s]
        if missing:
            try:
                with self.r.pipeline(transaction=False) as pipe:
                    for item in missing:
                        pipe.hgetall(f"{self.p}i:{item}")
                    for item, h in zip(missing, pipe.execute(), strict=True):
                        cache[item] = (now, parse_state_hash(h.items()))
            except redis.RedisError as exc:
                raise StoreError(f"Redis item read failed: {exc}") from None
        if len(cache) > 50_000:
            for item in [i for i, (t, _) in cache.items() if now - t > self.item_cache_s]:
                del cache[item]
        return [cache[i][1] for i in items]

    def model_inputs(self, user_id: str, user: dict[str, Any], recent: list[tuple[str, int]],
                     items: list[str], item_states: list[dict[str, Any]], now_ms: int) -> Any:
        """The exact inputs the model sees for (user, items) now: the functions that built the
        training examples (feature_values, BatchBuilder), on the state read from Redis. The price
        is the item's last seen price (training used the event's price)."""
        cats = [st.get("cat") for st in item_states]
        dense = feature_matrix(user, recent, item_states, cats,
                               [st.get("price") for st in item_states], now_ms, self.fc)
        return self.builder.build_for_scoring(dense, user_id, items, cats, [i for i, _ in recent])

    def rank(self, user_id: str, now_ms: int | None = None) -> Feed | None:
        now_ms = now_ms or int(time.time() * 1000)
        user, recent, reads = self.read_user(user_id, now_ms)
        cands = generate(reads, self.n_candidates)
        self.last_candidates = len(cands)
        if not cands:
            return None
        items = [c for c, _ in cands]
        states = self.read_items(items)
        loaded = self.holder.current
        if loaded is None:
            # No model published yet: rank by the candidate sources' order.
            scores = [1.0 / (1 + n) for n in range(len(items))]
        else:
            batch = self.model_inputs(user_id, user, recent, items, states, now_ms)
            with torch.inference_mode():
                scores = torch.sigmoid(loaded.model(batch.dense, batch.sparse)).tolist()
        order = sorted(range(len(items)), key=lambda k: -scores[k])[:self.feed_size]
        sources = Counter(cands[k][1] for k in order)
        last = user.get("last")
        return Feed(
            user_id=user_id,
            items=[FeedItem(items[k], round(float(scores[k]), 6), cands[k][1]) for k in order],
            model_version=loaded.version if loaded else None,
            generated_at_ms=int(time.time() * 1000),
            source_event_ts_ms=int(last) if last is not None else None,
            sources=dict(sources),
        )

    def popular_feed(self) -> Feed | None:
        try:
            popular = self._zlist(self.r.zrevrange(f"{self.p}pop", 0, self.feed_size - 1,
                                                   withscores=True))
        except redis.RedisError as exc:
            raise StoreError(f"Redis read of popular items failed: {exc}") from None
        if not popular:
            return None
        total = sum(s for _, s in popular) or 1.0
        loaded = self.holder.current
        return Feed(POPULAR, [FeedItem(i, round(s / total, 6), "popular") for i, s in popular],
                    model_version=loaded.version if loaded else None,
                    generated_at_ms=int(time.time() * 1000), sources={"popular": len(popular)})
