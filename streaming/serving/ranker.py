"""Scoring users' candidates with the newest model into ranked feeds (the scorer worker writes them).

``ModelHolder`` loads a published checkpoint (verified: sha256, spec digest,
``weights_only``) into a plain ``StreamRecModel`` and swaps it in atomically, with the index of
its item vectors when the model has a retriever (:mod:`streaming.serving.retrieval`); a failed
load keeps the previous model. ``FeedRanker`` reads users' state and candidates from Redis,
builds model inputs with :func:`streaming.features.state.feature_rows` and
:func:`models.batch.hash_ids` (the code that built the training examples: no training/serving
skew), scores several users in one forward pass and keeps each one's top K.
"""

from __future__ import annotations

import copy
import itertools
import logging
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np
import redis
import torch

from models.batch import BatchBuilder, ExampleBatch, ScoringRows, hash_ids, hash_optional_ids
from models.checkpoint import (
    ID_MAPS_FILE,
    RETRIEVAL_FILE,
    Manifest,
    apply_delta,
    chain,
    load_checkpoint,
    load_delta,
    read_blob,
    unpack_id_maps,
    unpack_item_vectors,
)
from models.dlrm import StreamRecModel
from models.spec import DEFAULT_SPEC, FeatureSpec
from streaming.contract.feeds import Feed, FeedItem
from streaming.contract.names import POPULAR_FEED, Keys
from streaming.errors import CorruptCheckpoint, StoreError
from streaming.features.candidates import (
    CandidateReads,
    excluded_items,
    found_before_retrieval,
    generate,
    source_seeds,
    source_sizes,
)
from streaming.features.state import (
    DEFAULT_FEATURES,
    FeatureConfig,
    UserItem,
    feature_matrix,
    indexed_feature_rows,
    item_columns,
    item_fields,
    parse_recent,
    parse_state_hashes,
    parse_user_items,
    price_values,
)
from streaming.io.redis_client import as_text
from streaming.serving.retrieval import Retrieval, RetrievalIndex, user_rows
from streaming.settings import ServingSettings

log = logging.getLogger(__name__)
_ITEMS_PER_CALL = 1_000  # item hashes per read_items.lua call: bounds how long Redis is busy


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """The model in service: its version, the module (eval mode), its checkpoint's path, its
    retriever with the index of the checkpoint's item vectors (None without one), and, with id
    maps (``model.id_maps``), the batch builder that looks ids up in the checkpoint's maps."""

    version: int
    model: StreamRecModel
    path: str
    retrieval: Retrieval | None = None
    builder: BatchBuilder | None = None


# Bounds of the scorer's read caches (entries); at the bound they are cut to half, newest kept.
_MAX_LISTS = 20_000
_MAX_ITEMS = 50_000


class ModelHolder:
    """Holds the model the scorer serves; :meth:`load` swaps in newer versions. ``loads`` and
    ``failures`` count the attempts, ``last_error`` is the latest failure's message.
    ``serving`` sizes the retrieval index (exact up to ``retrieval_exact_max_items``)."""

    def __init__(self, spec: FeatureSpec = DEFAULT_SPEC,
                 serving: ServingSettings | None = None) -> None:
        self.spec = spec
        self.serving = serving or ServingSettings()
        self._current: LoadedModel | None = None
        self._lock = threading.Lock()
        self.loads = 0
        self.failures = 0
        self.last_error = ""

    @property
    def current(self) -> LoadedModel | None:
        """The model in service; None until a load succeeded."""
        return self._current

    def load(self, path: str | Path, version: int) -> bool:
        """Load, verify and swap in; on any failure keep serving the previous model."""
        cur = self._current
        if cur is not None and version <= cur.version:
            return False
        try:
            manifest, model = self._build(Path(path), cur)
            builder = None
            if self.spec.mapped:  # the rows mean the maps' ids: serve both or neither
                raw = read_blob(Path(path), manifest, ID_MAPS_FILE)
                if raw is None:
                    raise CorruptCheckpoint(f"{path}: no {ID_MAPS_FILE} for the id-mapped "
                                            f"tables {list(self.spec.mapped)}")
                builder = BatchBuilder(self.spec, unpack_id_maps(raw))
            retrieval = None
            if model.retriever is not None:
                raw = read_blob(Path(path), manifest, RETRIEVAL_FILE)
                if raw is not None:  # a checkpoint published before any item was seen has none
                    ids, vectors, _ = unpack_item_vectors(raw)
                    retrieval = Retrieval(model.retriever, RetrievalIndex(
                        ids, vectors, self.serving.retrieval_exact_max_items,
                        self.serving.retrieval_nprobe))
        except (CorruptCheckpoint, RuntimeError, OSError) as exc:
            self.failures += 1
            self.last_error = str(exc)
            log.error("model v%d not loaded, still serving v%s: %s", version,
                      cur.version if cur else None, exc)
            return False
        with self._lock:
            self._current = LoadedModel(manifest.version, model, str(path), retrieval, builder)
        self.loads += 1
        log.info("serving model v%d", manifest.version)
        return True

    def _build(self, path: Path, cur: LoadedModel | None) -> tuple[Manifest, StreamRecModel]:
        """The model of version directory ``path``. A delta whose chain passes through the
        version served now (same checkpoint directory) is applied to a copy of the served
        model: only the newer deltas are read, whatever the tables' size. Anything else is
        loaded whole (:func:`load_checkpoint` rebuilds a delta through its chain)."""
        links = chain(path, self.spec.digest())
        versions = [m.version for _, m in links]
        if cur is not None and cur.version in versions[:-1] \
                and Path(cur.path).parent.resolve() == path.parent.resolve():
            model = copy.deepcopy(cur.model)  # the served one keeps scoring meanwhile
            state = model.state_dict()
            for link, manifest in links[versions.index(cur.version) + 1:]:
                apply_delta(state, load_delta(link, manifest))
            return links[-1][1], model
        manifest, full = load_checkpoint(path, self.spec.digest())
        model = StreamRecModel(self.spec)
        model.load_state_dict(full)
        model.eval()
        return manifest, model


@dataclass(slots=True)
class CachedItem:
    """An item's state as the scorer last read it, with what every user's batch needs of it."""

    read_at: float  # time.monotonic() (s)
    state: dict[str, Any]
    cols: np.ndarray  # F float64: the item's row of streaming.features.state.item_columns
    row: int  # hash_ids(item_id) in the item table
    category_row: int  # hash_ids(category) in the category table, -1 when absent
    category: str | None  # state["cat"]
    price: float  # price_values of state["price"]: NaN when absent or negative


@dataclass(slots=True)
class UserReads:
    """One user as read for ranking: feature hash, recent items, candidate lists."""

    user_id: str
    state: dict[str, Any]
    recent: list[tuple[str, int]]  # (item, ts ms), newest first
    candidates: CandidateReads
    user_items: dict[str, UserItem] = field(default_factory=dict)  # the user x item state
    neighbours: dict[str, float] = field(default_factory=dict)  # the neighbour list: item -> score


@dataclass(slots=True)
class CandidateBatch:
    """:meth:`FeedRanker.candidate_batch`: rows of ``parts[j]`` (user ``scored[j]``) come
    ``j``-th in ``batch``."""

    reads: list[UserReads]
    cands: list[list[tuple[str, str]]]  # per user: (item, source), in source order
    scored: list[int]  # indices of the users with candidates
    parts: list[ScoringRows]
    batch: ExampleBatch

    def split(self, flat: np.ndarray) -> dict[int, np.ndarray]:
        """One score per batch row -> user index -> scores of that user's candidates."""
        bounds = np.cumsum([0] + [len(self.cands[k]) for k in self.scored])
        return {k: flat[bounds[j]:bounds[j + 1]] for j, k in enumerate(self.scored)}


class FeedRanker:
    """Ranks users' candidates with the current model. Users are scored together: their reads
    share a Redis round trip and their rows one forward pass.

    What several users share is cached: the popular/new lists, co-visitation and category lists
    for ``cache_s`` seconds, so a feed may miss up to ``cache_s`` of other users' activity in
    them; item state until ingest changes it (the item change log, :meth:`sync_items`). The
    user's own state is read fresh on every refresh."""

    def __init__(self, client: redis.Redis, key_prefix: str, holder: ModelHolder, *,
                 serving: ServingSettings | None = None,
                 features: FeatureConfig = DEFAULT_FEATURES) -> None:
        self.r = client
        self._scripts: dict[str, Any] = {}  # lua/ scripts, registered on first use
        self.limits = limits = serving or ServingSettings()
        self.cache_s = limits.cache_s
        self._items: dict[str, CachedItem] = {}
        self._item_cursor: int | None = None  # the item change log's seq at the last sync
        self.item_lookups = 0  # distinct items read_items was asked for, summed over calls
        self.item_reads = 0  # item hashes read from Redis (the cache's misses)
        self._lists: dict[str, tuple[float, list[tuple[str, float]]]] = {}
        self.last_candidates = 0
        self.keys = Keys(key_prefix)
        self.holder = holder
        self.feed_size = limits.feed_size
        self.n_candidates = limits.candidates
        self.fc = features
        self.builder = BatchBuilder(holder.spec)
        self.sizes = source_sizes(limits)

    def _script(self, name: str) -> Any:
        """A script of ``streaming/serving/lua/``, registered with the client on first use."""
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = self.r.register_script(
                resources.files("streaming.serving").joinpath("lua", name).read_text())
        return script

    @staticmethod
    def _zlist(flat: list[bytes]) -> list[tuple[str, float]]:
        """A ZREVRANGE ... WITHSCORES reply of read_users.lua (member, score, ...) as pairs."""
        members = flat[::2]
        # C-level maps: thousands of members per batch (clients here return bytes).
        names = map(bytes.decode, members) if members and isinstance(members[0], bytes) \
            else map(as_text, members)
        return list(zip(names, map(float, flat[1::2]), strict=True))

    def _stale(self, key: str, now: float) -> bool:
        hit = self._lists.get(key)
        return hit is None or now - hit[0] > self.cache_s

    def _read(self, user_ids: Sequence[str], wanted: dict[str, int], now: float
              ) -> list[list[Any]]:
        """One read_users.lua call: the users' six reads each, and the stale ones among
        ``wanted`` (zset key -> how many), which are cached. Returns the users' replies."""
        k_, lim = self.keys, self.limits
        stale = [k for k in wanted if self._stale(k, now)]
        keys = [key for u in user_ids for key in (
            k_.user(u), k_.recent(u), k_.purchased(u), k_.user_items(u), k_.user_items_order(u),
            k_.neighbours(u))]
        if not keys and not stale:
            return []
        users, lists = self._script("read_users.lua")(keys=keys + stale, args=[
            self.fc.recent_items, lim.again_candidates, len(user_ids), *(wanted[k] for k in stale)])
        for key, flat in zip(stale, lists, strict=True):
            self._lists[key] = (now, self._zlist(flat))
        return users

    def _evict(self, now: float) -> None:
        # Expired entries go first; if the fresh ones alone exceed the bound (a burst of new
        # items within cache_s), the oldest reads go too: memory stays bounded either way.
        if len(self._lists) > _MAX_LISTS:
            fresh = sorted(((v[0], k) for k, v in self._lists.items() if now - v[0] <= self.cache_s),
                           reverse=True)[:_MAX_LISTS // 2]
            self._lists = {k: self._lists[k] for _, k in fresh}
        if len(self._items) > _MAX_ITEMS:  # items stay valid until changed: keep the newest reads
            kept = sorted(((v.read_at, k) for k, v in self._items.items()),
                          reverse=True)[:_MAX_ITEMS // 2]
            self._items = {k: self._items[k] for _, k in kept}

    def read_users(self, user_ids: Sequence[str], now_ms: int) -> list[UserReads]:
        """Users' state and candidate lists in two read_users.lua calls for all of them."""
        k_, now = self.keys, time.monotonic()
        lim = self.limits
        shared = {k_.popular: lim.popular_candidates, k_.new_items: lim.new_candidates,
                  k_.trending: lim.trending_candidates}
        try:
            res = self._read(user_ids, shared, now)
            users = []
            wanted: dict[str, int] = {}
            states = parse_state_hashes(r[0] for r in res)
            for u, state, (_, recent_raw, bought, ui_hash, again_raw, nb_raw) in zip(
                    user_ids, states, res, strict=True):
                recent = parse_recent([as_text(x) for x in recent_raw])
                recent_items, cats = source_seeds(state, [i for i, _ in recent], now_ms,
                                                  self.fc.affinity_half_life_ms, self.sizes)
                again = self._zlist(again_raw)
                seeds = list(dict.fromkeys(
                    [*recent_items, *(i for i, _ in again[:lim.covisit_own_seeds])]))
                wanted.update({k_.covisit(i): lim.covisit_per_item for i in seeds})
                wanted.update({k_.category_items(c): lim.category_candidates for c in cats})
                users.append((u, state, recent, recent_items, seeds, cats,
                              {as_text(b) for b in bought},
                              parse_user_items(zip(ui_hash[::2], ui_hash[1::2], strict=True)),
                              again, self._zlist(nb_raw)))
            self._read([], wanted, now)
        except redis.RedisError as exc:
            raise StoreError(f"Redis read for users {list(user_ids)[:3]!r}... failed: {exc}"
                             ) from None
        lists = self._lists
        out = [UserReads(u, state, recent, CandidateReads(
            recent=recent_items,
            covisit={i: lists[k_.covisit(i)][1] for i in seeds},
            by_category={c: lists[k_.category_items(c)][1] for c in cats},
            new_items=lists[k_.new_items][1], popular=lists[k_.popular][1],
            trending=lists[k_.trending][1], purchased=bought, again=again,
            interacted=set(own), neighbours=nb[:lim.neighbour_candidates]), own, dict(nb))
            for u, state, recent, recent_items, seeds, cats, bought, own, again, nb in users]
        self._evict(now)
        return out

    def read_user(self, user_id: str, now_ms: int) -> UserReads:
        """:meth:`read_users` for one user."""
        return self.read_users([user_id], now_ms)[0]

    def sync_items(self) -> None:
        """Drop the cached items whose state ingest changed since the last sync: every applied
        batch names them in the item change log (``Keys.item_changes``). On the first sync, and
        when the log was trimmed past this scorer's cursor or restarted (Redis lost its data),
        the whole cache goes."""
        cursor = self._item_cursor
        try:
            seq, floor, changed = self._script("item_changes.lua")(
                keys=[self.keys.item_changes, self.keys.item_changes_meta],
                args=[-1 if cursor is None else cursor])
        except redis.RedisError as exc:
            raise StoreError(f"Redis read of the item change log failed: {exc}") from None
        if cursor is None or not floor <= cursor <= seq:
            self._items.clear()
        else:
            for item in changed:
                self._items.pop(as_text(item), None)
        self._item_cursor = seq

    def read_items(self, items: Sequence[str]) -> dict[str, CachedItem]:
        """Item state with its feature columns and hashed rows, cached until ingest changes it
        (:meth:`sync_items`, one round trip per call); with ``cache_s`` = 0 read every time."""
        distinct = list(dict.fromkeys(items))
        self.item_lookups += len(distinct)
        now = time.monotonic()
        cache = self._items
        if self.cache_s > 0:
            self.sync_items()
            missing = [i for i in distinct if i not in cache]
        else:
            missing = distinct
        if missing:
            self.item_reads += len(missing)
            keys = [self.keys.item(i) for i in missing]
            read = self._script("read_items.lua")
            try:
                states = parse_state_hashes(
                    flat for start in range(0, len(keys), _ITEMS_PER_CALL)
                    for flat in read(keys=keys[start:start + _ITEMS_PER_CALL]))
            except redis.RedisError as exc:
                raise StoreError(f"Redis item read failed: {exc}") from None
            spec = self.holder.spec
            cols = item_columns(states, self.fc)
            rows = hash_ids(missing, spec.table_of("item_id").num_embeddings).tolist()
            cats = [st.get("cat") for st in states]
            cat_rows = hash_optional_ids(cats, spec.table_of("category").num_embeddings).tolist()
            prices = price_values((st.get("price") for st in states), len(states)).tolist()
            for k, item in enumerate(missing):
                cache[item] = CachedItem(now, states[k], cols[k], rows[k], cat_rows[k], cats[k],
                                         prices[k])
        return {i: cache[i] for i in distinct}

    def scoring_rows(self, reads: UserReads, items: Sequence[str], cached: dict[str, CachedItem],
                     now_ms: int) -> ScoringRows:
        """The exact inputs the model sees for (user, items) now: the functions that built the
        training examples (feature_rows, hash_ids), on the state read from Redis. The price
        is the item's last seen price (training used the event's price)."""
        return self.scoring_parts([reads], [items], cached, now_ms)[0]

    def scoring_parts(self, reads: Sequence[UserReads], items: Sequence[Sequence[str]],
                      cached: Mapping[str, CachedItem], now_ms: int) -> list[ScoringRows]:
        """:meth:`scoring_rows` of ``reads[j]`` against ``items[j]`` for every ``j``, with the
        dense features of all of them computed in one :func:`indexed_feature_rows` call: an
        item several users share is gathered from ``cached`` once."""
        counts = [len(x) for x in items]
        flat = list(itertools.chain.from_iterable(items))
        distinct = list(dict.fromkeys(flat))
        slot = {item: k for k, item in enumerate(distinct)}
        index = np.fromiter(map(slot.__getitem__, flat), np.intp, len(flat))
        entries = [cached[i] for i in distinct]
        width = len(item_fields(self.fc))
        # One concatenate of the flat rows: np.stack of thousands of small rows costs 4x more.
        cols = np.concatenate([c.cols for c in entries]).reshape(len(entries), width) \
            if entries else np.empty((0, width), np.float64)
        cats = [c.category for c in entries]
        user_items: list[UserItem | None] = []
        nb_scores: list[float] = []
        for r, x in zip(reads, items, strict=True):
            user_items.extend(map(r.user_items.get, x))
            nb_scores.extend(r.neighbours.get(i, 0.0) for i in x)
        owner = np.repeat(np.arange(len(reads)), counts)
        dense = indexed_feature_rows(
            [r.state for r in reads], owner,
            np.array([len(r.recent) for r in reads], np.float64)[owner], cols, cats,
            np.array([c.price for c in entries], np.float64), index, now_ms, self.fc, user_items,
            nb_scores)
        item_rows = np.array([c.row for c in entries], np.int64)[index]
        cat_rows = np.array([c.category_row for c in entries], np.int64)[index]
        bounds = np.cumsum([0, *counts]).tolist()
        return [ScoringRows(dense[a:b], r.user_id, list(x),
                            list(map(cats.__getitem__, index[a:b].tolist())),
                            [i for i, _ in r.recent], item_rows=item_rows[a:b],
                            category_rows=cat_rows[a:b])
                for r, x, a, b in zip(reads, items, bounds, bounds[1:], strict=False)]

    def model_inputs(self, reads: UserReads, items: Sequence[str], now_ms: int) -> ExampleBatch:
        """The model's input batch for one user (as :meth:`read_user` read them) against
        ``items`` at ``now_ms`` (reads the items' state when not cached)."""
        rows = self.scoring_rows(reads, items, self.read_items(items), now_ms)
        return self.builder_for(self.holder.current).build_for_scoring([rows])

    def builder_for(self, loaded: LoadedModel | None) -> BatchBuilder:
        """The batch builder of ``loaded`` (its id maps), else the hashing one."""
        return loaded.builder if loaded is not None and loaded.builder is not None \
            else self.builder

    def rank(self, user_id: str, now_ms: int | None = None) -> Feed | None:
        """:meth:`rank_many` for one user: the feed, or None when the user has no candidates."""
        return self.rank_many([user_id], now_ms)[0]

    def retrieve(self, reads: Sequence[UserReads], retrieval: Retrieval, now_ms: int,
                 builder: BatchBuilder | None = None) -> None:
        """Fill each user's ``candidates.retrieved`` with the retriever's nearest items (the
        user tower's inputs built from the reads, as for scoring, by ``builder``: the served
        model's, with its id maps; default the hashing one). Asks for the repeat policy's
        excluded items and the items the sources ahead of it give on top (see
        :func:`~streaming.features.candidates.found_before_retrieval`), so that neither crowds
        out the source's own new items."""
        rows = []
        for r in reads:
            dense = feature_matrix(r.state, r.recent, [{}], [None], [None], now_ms, self.fc,
                                   None, [None])[0]
            rows.append(user_rows(r.user_id, dense, [i for i, _ in r.recent]))
        lim = self.limits
        # One query for the batch, as deep as its fullest user needs: the excluded items and
        # those the sources ahead already found are skipped by generate(), and the source must
        # still give up to retrieval_candidates new items (bounded by the whole budget).
        skipped = max(len(excluded_items(r.candidates, lim.repeat))
                      + found_before_retrieval(r.candidates, lim.covisit_candidates)
                      for r in reads)
        k = lim.retrieval_candidates
        found = retrieval.query(builder or self.builder, rows, k + min(skipped, self.n_candidates))
        for r, items in zip(reads, found, strict=True):
            r.candidates.retrieved = items

    def candidate_batch(self, user_ids: Sequence[str], now_ms: int,
                        retrieval: Retrieval | None = None,
                        loaded: LoadedModel | None = None) -> CandidateBatch:
        """Users' reads, candidates and (for those with any) the model inputs of all their
        candidates in one batch: what a forward pass of any model over them needs. Retrieval
        candidates come from ``retrieval`` (default: the served model's, if it has one); ids
        are looked up in ``loaded``'s id maps when it has them (default: the served model)."""
        reads = self.read_users(user_ids, now_ms)
        loaded = loaded or self.holder.current
        if retrieval is None and loaded is not None:
            retrieval = loaded.retrieval
        if retrieval is not None and reads:
            self.retrieve(reads, retrieval, now_ms, self.builder_for(loaded))
        cands = [generate(r.candidates, self.n_candidates, self.limits.repeat,
                          self.limits.covisit_candidates, self.limits.retrieval_candidates)
                 for r in reads]
        self.last_candidates = sum(map(len, cands))
        scored = [k for k, c in enumerate(cands) if c]
        items = [list(map(itemgetter(0), cands[k])) for k in scored]
        parts = self.scoring_parts([reads[k] for k in scored], items,
                                   self.read_items(list(itertools.chain.from_iterable(items))), now_ms)
        return CandidateBatch(reads, cands, scored, parts,
                              self.builder_for(loaded).build_for_scoring(parts))

    def rank_many(self, user_ids: Sequence[str], now_ms: int | None = None) -> list[Feed | None]:
        """Feeds for ``user_ids`` (``None`` for a user with no candidates at all), scored in one
        forward pass of ``sum(candidates)`` rows."""
        now_ms = now_ms or int(time.time() * 1000)
        loaded = self.holder.current
        cb = self.candidate_batch(user_ids, now_ms, loaded=loaded)
        reads, cands, scored = cb.reads, cb.cands, cb.scored
        if loaded is None:
            # No model published yet: rank by the candidate sources' order.
            scores = {k: 1.0 / (1.0 + np.arange(len(cands[k]))) for k in scored}
        else:
            with torch.inference_mode():
                flat = torch.sigmoid(loaded.model(cb.batch.dense, cb.batch.sparse)).numpy()
            scores = cb.split(flat)
        generated = int(time.time() * 1000)
        feeds: list[Feed | None] = [None] * len(reads)
        for k in scored:
            top = np.argsort(-scores[k], kind="stable")[:self.feed_size]
            user_cands = cands[k]
            picked = [user_cands[j] for j in top.tolist()]
            last = reads[k].state.get("last")
            feeds[k] = Feed(
                user_id=reads[k].user_id,
                items=[FeedItem(item, round(score, 6), source) for (item, source), score
                       in zip(picked, scores[k][top].tolist(), strict=True)],
                model_version=loaded.version if loaded else None,
                generated_at_ms=generated,
                source_event_ts_ms=int(last) if last is not None else None,
                sources=dict(Counter(source for _, source in picked)),
            )
        return feeds

    def popular_feed(self) -> Feed | None:
        """The fallback feed for users without one: the items trending now (decayed
        popularity), not all-time bestsellers. Scores are shares of the listed items' decayed
        counts (the trending list's common scale factor cancels)."""
        try:
            trending = [(as_text(m), float(v)) for m, v in self.r.zrevrange(
                self.keys.trending, 0, self.feed_size - 1, withscores=True)]
        except redis.RedisError as exc:
            raise StoreError(f"Redis read of trending items failed: {exc}") from None
        if not trending:
            return None
        total = sum(s for _, s in trending) or 1.0
        loaded = self.holder.current
        return Feed(POPULAR_FEED, [FeedItem(i, round(s / total, 6), "trending") for i, s in trending],
                    model_version=loaded.version if loaded else None,
                    generated_at_ms=int(time.time() * 1000), sources={"trending": len(trending)})
