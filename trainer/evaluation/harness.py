"""The prequential loop: per tick of event time, feed events, score the examples that became
due with every model *before* any trains on them, then train; per window, rank feeds first.

Models compared in one run, on the same examples and the same candidates:

- ``continuous``: the sharded DLRM (``trainer.distributed.build_sharded``, the trainer's step
  ``trainer.loop.sgd_step``) fine-tuned on every tick, served copy refreshed every tick;
- sweep: the same training run served through copies refreshed every ``interval`` of event
  time (the publish cadence); the smallest interval is ``continuous``;
- ``frozen``: the served copy at the end of the warm-up (first ``warmup_share`` of event time),
  never refreshed again: the sweep's "never";
- ``lightgbm``: retrained from scratch every ``lgbm_every_ms`` on the examples so far;
- ``popularity`` (decayed) and ``covisit`` (the feature store's co-visitation lists): feeds only.

Overall numbers cover the time after the warm-up (before it, frozen and continuous are one
model); per-window numbers cover every window.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from models.batch import BatchBuilder, ExampleBatch, hash_optional_ids
from models.dlrm import StreamRecModel
from models.spec import DEFAULT_SPEC, FeatureSpec
from streaming.contract.events import Event
from streaming.features.state import feature_config
from streaming.io.redis_client import connect
from streaming.serving.ranker import CandidateBatch, FeedRanker, ModelHolder
from streaming.settings import Settings
from trainer import distributed as D
from trainer.evaluation.ingest import Ingest
from trainer.evaluation.lgbm import BatchRetrained, lgbm_matrix
from trainer.evaluation.profiles import LoadedStream
from trainer.evaluation.ranking import (
    DecayedPopularity,
    covisit_ranking,
    ndcg_at_k,
    recall_at_k,
    top_k,
)
from trainer.loop import sgd_step
from trainer.metrics import auc, log_loss

LEARNED = ("continuous", "frozen", "lightgbm")
RANKERS = ("continuous", "frozen", "popularity", "covisit", "lightgbm")


@dataclass(frozen=True, slots=True)
class EvalOptions:
    """Knobs of one evaluation: ``k`` of Recall@K / NDCG@K (also the feed size), users ranked and
    candidates per user per window, the warm-up share of event time, the trainer's batch size."""

    k: int = 20
    rank_users: int = 200  # users ranked per window (a seeded sample of those who interact)
    candidates: int = 500
    warmup_share: float = 0.2
    batch_size: int = 1024  # examples per trainer step (a tick's examples are split)


@dataclass(slots=True)
class Served:
    """A published copy of the model, as a scorer would hold it."""

    interval_ms: int | None  # None: never refreshed after the warm-up (frozen)
    model: StreamRecModel
    published_at: int
    probs: list[np.ndarray] = field(default_factory=list)  # per scored tick
    ages_ms: list[float] = field(default_factory=list)  # per scored tick: age (ms) x examples


def _sample_users(relevant: dict[str, set[str]], n: int, seed: int, window: int) -> list[str]:
    users = sorted(relevant)
    if len(users) <= n:
        return users
    return sorted(random.Random(seed * 1_000_003 + window).sample(users, n))


def _relevant_by_window(events: Sequence[Event], t0: int, window_ms: int,
                        types: Sequence[str]) -> dict[int, dict[str, set[str]]]:
    out: dict[int, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for e in events:
        if e.event_type in types:
            out[(e.ts - t0) // window_ms][e.user_id].add(e.item_id)
    return out


class PrequentialRun:
    """One prequential evaluation of ``stream``: the models of the module docstring, trained and
    scored on the examples ``ingest`` returns, feeds ranked by a :class:`FeedRanker` on Redis.

    Builds the sharded DLRM in a 1-rank group (:func:`trainer.distributed.init`); raises
    ``ValueError`` if the profile's smallest publish interval is not its tick. ``say`` gets the
    progress lines. Call :meth:`run` once, then :meth:`close`.
    """

    def __init__(self, settings: Settings, stream: LoadedStream, ingest: Ingest, seed: int,
                 opts: EvalOptions | None = None, spec: FeatureSpec = DEFAULT_SPEC,
                 say: Callable[[str], None] = print) -> None:
        self.settings = settings
        self.stream = stream
        self.profile = stream.profile
        if min(self.profile.sweep_ms) != self.profile.tick_ms:
            # "continuous" is the sweep's first entry: a copy refreshed after every step.
            raise ValueError(f"{self.profile.name}: the smallest publish interval must be the tick")
        self.ingest = ingest
        self.seed = seed
        self.opts = opts = opts or EvalOptions()
        self.spec = spec
        self.say = say
        torch.manual_seed(seed)
        np.random.seed(seed)
        self.info = D.init()
        self.dmp, self.optimizer = D.build_sharded(spec, self.info)
        self.builder = BatchBuilder(spec)
        self._redis = connect(settings.redis)
        serving = dataclasses.replace(settings.serving, feed_size=opts.k,
                                      candidates=opts.candidates, cache_s=0.0)
        self.ranker = FeedRanker(self._redis, settings.redis.key_prefix, ModelHolder(spec),
                                 serving=serving, features=feature_config(settings))
        self.lgbm = BatchRetrained(seed)
        self.popularity = DecayedPopularity(self.profile.popularity_half_life_ms)
        self.n_cat = spec.table_of("category").num_embeddings

    # -- models ---------------------------------------------------------------------------
    def _export(self) -> dict[str, torch.Tensor]:
        state = D.gather_full_state(self.dmp, self.info)
        assert state is not None  # one rank
        return state

    def _new_served(self, interval_ms: int | None, state: dict[str, torch.Tensor],
                    at: int) -> Served:
        model = StreamRecModel(self.spec)
        model.load_state_dict(state)
        model.eval()
        return Served(interval_ms, model, at)

    @staticmethod
    def _probs(model: StreamRecModel, batch: ExampleBatch) -> np.ndarray:
        with torch.inference_mode():
            return torch.sigmoid(model(batch.dense, batch.sparse)).numpy().astype(np.float64)

    # -- ranking --------------------------------------------------------------------------
    def _rank_window(self, window: int, now_ms: int, relevant: dict[str, set[str]],
                     models: dict[str, StreamRecModel]) -> dict[str, list[tuple[float, float]]]:
        """Per ranker: ``(recall, ndcg)`` of each sampled user's top K at ``now_ms``."""
        k = self.opts.k
        users = _sample_users(relevant, self.opts.rank_users, self.seed, window)
        out: dict[str, list[tuple[float, float]]] = {name: [] for name in RANKERS}
        if not users:
            return out
        cb: CandidateBatch = self.ranker.candidate_batch(users, now_ms)
        scores: dict[str, dict[int, np.ndarray]] = {}
        if cb.scored:
            for name, model in models.items():
                scores[name] = cb.split(self._probs(model, cb.batch))
            cat_rows = np.concatenate([p.category_rows for p in cb.parts])  # type: ignore[misc]
            scores["lightgbm"] = cb.split(self.lgbm.predict(lgbm_matrix(
                cb.batch.dense.numpy(), cat_rows)))
        for j, user in enumerate(users):
            rel = relevant[user]
            reads = cb.reads[j].candidates
            items = [i for i, _ in cb.cands[j]]
            lists = {name: (top_k(items, s[j], k) if j in s else [])
                     for name, s in scores.items()}
            lists["popularity"] = self.popularity.ranking(k, exclude=reads.purchased)
            lists["covisit"] = covisit_ranking(reads.recent, reads.covisit, k,
                                               exclude=reads.purchased)
            for name in RANKERS:
                ranked = lists.get(name, [])
                out[name].append((recall_at_k(ranked, rel, k), ndcg_at_k(ranked, rel, k)))
        return out

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Replay the stream tick by tick and return the results: overall AUC / log-loss per
        model and Recall@K / NDCG@K per ranker after the warm-up, the publish-interval sweep,
        per-window series and counts. Raises ``ValueError`` if no example was labelled."""
        prof, opts, events = self.profile, self.opts, self.stream.events
        started = time.perf_counter()
        t0, t_end = events[0].ts, events[-1].ts
        warm_end = t0 + int(opts.warmup_share * (t_end - t0))
        relevant = _relevant_by_window(events, t0, prof.window_ms, prof.relevant)
        state = self._export()
        sweep = [self._new_served(ms, state, t0) for ms in sorted(prof.sweep_ms)]
        frozen = self._new_served(None, state, t0)
        frozen_fixed = False
        ticks: dict[int, list[Event]] = defaultdict(list)
        for e in events:
            ticks[(e.ts - t0) // prof.tick_ms].append(e)

        labels: list[np.ndarray] = []
        example_ts: list[np.ndarray] = []
        lgbm_probs: list[np.ndarray] = []
        ranked: dict[int, dict[str, list[tuple[float, float]]]] = {}
        window = -1
        last_lgbm = t0
        examples_total = steps = 0
        order = sorted(ticks)
        report_every = max(1, len(order) // 10)
        for n_tick, tick in enumerate(order):
            if n_tick % report_every == 0:
                self.say(f"  {100 * n_tick // len(order):3d}% of event time: {examples_total} "
                         f"examples, {steps} steps, "
                         f"{time.perf_counter() - started:.0f} s")
            tick_start = t0 + tick * prof.tick_ms
            w = (tick_start - t0) // prof.window_ms
            if w != window:
                window = w
                ranked[w] = self._rank_window(w, t0 + w * prof.window_ms, relevant.get(w, {}),
                                              {"continuous": sweep[0].model,
                                               "frozen": frozen.model})
            tick_events = ticks[tick]
            examples = self.ingest.feed(tick_events)
            self.popularity.update(tick_events)
            if examples:
                batch = self.builder.build(examples)
                y = batch.labels.numpy().astype(np.float64)
                labels.append(y)
                example_ts.append(np.fromiter((ex["ts"] for ex in examples), np.int64,
                                              len(examples)))
                for served in [*sweep, frozen]:
                    served.probs.append(self._probs(served.model, batch))
                    served.ages_ms.append(float(tick_start - served.published_at) * len(y))
                x = lgbm_matrix(batch.dense.numpy(), hash_optional_ids(
                    [ex.get("category") for ex in examples], self.n_cat))
                lgbm_probs.append(self.lgbm.predict(x))
                self.lgbm.add(x, y)
                # The scored batch is the step's batch unless the tick needs several steps.
                chunks = [batch] if len(examples) <= opts.batch_size else [
                    self.builder.build(examples[start:start + opts.batch_size])
                    for start in range(0, len(examples), opts.batch_size)]
                for chunk in chunks:
                    if len(chunk) >= 2:  # batch statistics need two rows
                        sgd_step(self.dmp, self.optimizer, chunk, self.info.device)
                        steps += 1
                examples_total += len(examples)
            tick_end = tick_start + prof.tick_ms
            due = [s for s in sweep if tick_end - s.published_at >= s.interval_ms]  # type: ignore[operator]
            if not frozen_fixed:
                due.append(frozen)
                frozen_fixed = tick_end >= warm_end
            if due and examples_total:
                state = self._export()
                for s in due:
                    s.model.load_state_dict(state)
                    s.published_at = tick_end
            if tick_end - last_lgbm >= prof.lgbm_every_ms and self.lgbm.retrain():
                last_lgbm = tick_end
        if not labels:
            raise ValueError("the stream produced no labelled examples: nothing to evaluate")
        return self._summarise(
            np.concatenate(labels), np.concatenate(example_ts), sweep, frozen,
            np.concatenate(lgbm_probs), ranked, t0, warm_end,
            {"examples": examples_total, "train_steps": steps, "lgbm_fits": self.lgbm.fits,
             "elapsed_s": round(time.perf_counter() - started, 1)})

    # -- results --------------------------------------------------------------------------
    def _summarise(self, y: np.ndarray, ts: np.ndarray, sweep: list[Served], frozen: Served,
                   lgbm: np.ndarray, ranked: dict[int, dict[str, list[tuple[float, float]]]],
                   t0: int, warm_end: int, counts: dict[str, Any]) -> dict[str, Any]:
        prof = self.profile
        probs = {"continuous": np.concatenate(sweep[0].probs),
                 "frozen": np.concatenate(frozen.probs), "lightgbm": lgbm}
        after = ts >= warm_end
        win = (ts - t0) // prof.window_ms

        def rnd(x: float) -> float | None:
            return None if math.isnan(x) else round(x, 5)

        def pooled(mask: np.ndarray) -> dict[str, dict[str, float | None]]:
            return {name: {"auc": rnd(auc(p[mask], y[mask])) if mask.any() else None,
                           "logloss": rnd(log_loss(p[mask], y[mask])) if mask.any() else None}
                    for name, p in probs.items()}

        overall = pooled(after)
        windows = []
        for w in sorted(set(win.tolist()) | set(ranked)):
            start = t0 + w * prof.window_ms
            m = win == w
            entry: dict[str, Any] = {"window": w, "start_ms": start, "examples": int(m.sum()),
                                     "after_warmup": start >= warm_end}
            entry.update({f"auc_{n}": v["auc"] for n, v in pooled(m).items()})
            for name, pairs in ranked.get(w, {}).items():
                entry[f"recall_{name}"] = rnd(float(np.mean([r for r, _ in pairs]))) \
                    if pairs else None
                entry[f"ndcg_{name}"] = rnd(float(np.mean([n for _, n in pairs]))) \
                    if pairs else None
            entry["ranked_users"] = len(ranked.get(w, {}).get("continuous", []))
            windows.append(entry)

        def ranking_mean(name: str, which: int) -> float | None:
            vals = [pair[which] for w, per in ranked.items()
                    if t0 + w * prof.window_ms >= warm_end for pair in per[name]]
            return rnd(float(np.mean(vals))) if vals else None

        sweep_out = []
        for s in [*sweep, frozen]:
            p = np.concatenate(s.probs)
            sweep_out.append({
                "publish_interval_s": None if s.interval_ms is None else s.interval_ms / 1000,
                "label": "never (frozen)" if s.interval_ms is None else
                _human(s.interval_ms),
                "auc": rnd(auc(p[after], y[after])), "logloss": rnd(log_loss(p[after], y[after])),
                "mean_model_age_s": round(sum(s.ages_ms) / max(1, len(p)) / 1000, 1),
            })
        ctr = float(y[after].mean()) if after.any() else float("nan")
        return {
            "auc": {n: v["auc"] for n, v in overall.items()},
            "logloss": {n: v["logloss"] for n, v in overall.items()},
            "recall_at_20" if self.opts.k == 20 else f"recall_at_{self.opts.k}":
                {n: ranking_mean(n, 0) for n in RANKERS},
            "ndcg_at_20" if self.opts.k == 20 else f"ndcg_at_{self.opts.k}":
                {n: ranking_mean(n, 1) for n in RANKERS},
            "sweep": sweep_out,
            "windows": windows,
            "positive_rate_after_warmup": rnd(ctr),
            "warmup_end_ms": warm_end,
            "first_event_ms": t0,
            "drifts_ms": self.stream.drifts_ms,
            "window_s": prof.window_ms / 1000,
            "tick_s": prof.tick_ms / 1000,
            "events": len(self.stream.events),
            "dead_lettered": self.ingest.dead_lettered,
            **counts,
        }

    def close(self) -> None:
        """Close the Redis connection (the caller closes the ingest and deletes the keys)."""
        self._redis.close()


def _human(ms: int) -> str:
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("min", 60_000), ("s", 1000)):
        if ms >= size and ms % size == 0:
            return f"{ms // size} {unit}"
    return f"{ms / 1000:g} s"


def cleanup(settings: Settings) -> None:
    """Delete this run's Redis keys (a run uses its own key prefix)."""
    client = connect(settings.redis)
    try:
        batch = []
        for key in client.scan_iter(match=f"{settings.redis.key_prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                client.unlink(*batch)
                batch.clear()
        if batch:
            client.unlink(*batch)
    finally:
        client.close()


def run_tag() -> str:
    """8 random hex digits that name one run's Redis key prefix and topics."""
    return uuid.uuid4().hex[:8]

