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
- feeds only: ``popularity`` (decayed, every item), ``popularity_repeat_policy`` (the same
  without the user's items that ``serving.repeat`` excludes), ``buy_again`` (the user's own past
  items by recency-weighted count, topped up with popular items), ``user_knn`` (the user's own
  and their nearest users' items, TIFU-KNN style: :class:`trainer.evaluation.ranking.UserKnn`;
  without what ``serving.repeat`` excludes) and ``covisit`` (the feature store's co-visitation
  lists, without what ``serving.repeat`` excludes).

At each window's start the users who interact in the window (all, or a seeded sample of
``rank_users``) get top-K feeds from every ranker. Besides Recall@K / NDCG@K, the run measures
candidate recall (the share of those interactions whose item is among the user's candidates at
all, total and by candidate source) and a 95% interval of each ranker's Recall@K over users
(:mod:`trainer.evaluation.stats`). Before that, the scorers' neighbour job
(:mod:`streaming.serving.neighbour_job`) rebuilds every user's neighbour list, as a scorer with a
period of one window would: the ``neighbours`` candidates and the ``nb_score`` feature of the
feeds and of the window's training examples come from those lists.

With a retriever (``model.retrieval_dim > 0``) the continuous model's retriever gives the
``retrieval`` candidate source, its index built at each window's start from the items trained
on so far (:class:`trainer.catalogue.ItemCatalogue`, as the trainer publishes it), and the
run reports candidate recall with and without that source at the same candidate budget.

Overall numbers cover the time after the warm-up (before it, frozen and continuous are one
model); per-window numbers cover every window.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.batch import BatchBuilder, ExampleBatch, hash_optional_ids
from models.dlrm import StreamRecModel
from models.spec import DEFAULT_SPEC, FeatureSpec
from streaming.contract.events import Event
from streaming.contract.names import Keys
from streaming.errors import StreamrecError
from streaming.features.candidates import excluded_items, generate
from streaming.features.state import feature_config
from streaming.io.redis_client import connect
from streaming.serving.neighbour_job import NeighbourJob
from streaming.serving.ranker import CandidateBatch, FeedRanker, ModelHolder
from streaming.serving.retrieval import Retrieval, RetrievalIndex
from streaming.settings import Settings
from trainer import distributed as D
from trainer.catalogue import ItemCatalogue
from trainer.evaluation.dump import CandidateDump
from trainer.evaluation.ingest import Ingest
from trainer.evaluation.lgbm import BatchRetrained, lgbm_matrix
from trainer.evaluation.profiles import LoadedStream, format_duration_ms
from trainer.evaluation.ranking import (
    BuyAgain,
    CandidateRecall,
    DecayedPopularity,
    UserKnn,
    best_then,
    covisit_ranking,
    ndcg_at_k,
    recall_at_k,
    take,
    top_k,
)
from trainer.evaluation.stats import mean_ci95
from trainer.loop import sgd_step
from trainer.metrics import auc, log_loss

LEARNED = ("continuous", "frozen", "lightgbm")
RANKERS = ("continuous", "frozen", "popularity", "popularity_repeat_policy", "buy_again",
           "user_knn", "covisit", "lightgbm")
# Every ranker's recall is compared with each of these, paired (issue 15's baselines).
BASELINES = ("popularity", "popularity_repeat_policy", "buy_again", "user_knn", "covisit",
             "lightgbm")


@dataclass(frozen=True, slots=True)
class EvalOptions:
    """Knobs of one evaluation: ``k`` of Recall@K / NDCG@K (also the feed size), users ranked and
    candidates per user per window (None: ``serving.candidates``, the scorer's budget), the
    warm-up share of event time, the trainer's batch size."""

    k: int = 20
    # Users ranked per window: a seeded sample of those who interact in it; 0 = every one.
    rank_users: int = 2000
    candidates: int | None = None
    warmup_share: float = 0.2
    batch_size: int = 1024  # examples per trainer step (a tick's examples are split)
    rank_batch_users: int = 250  # users whose candidates share one forward pass when ranking
    # Where to write every ranked candidate's features, scores and label (None: nowhere).
    dump_dir: Path | None = None
    # The user_knn baseline (UserKnn): count half-life (ms; None: 16 windows), neighbours,
    # own weight. Chosen on UCI's first half of test windows (README, "Evaluation"): 16 weekly
    # windows are 112 d; 7 d (buy-again's) gave Recall@20 0.268 against 0.290 at 120 d.
    knn_half_life_ms: int | None = None
    knn_neighbours: int = 100
    knn_own_weight: float = 0.3
    knn_candidates: int = 100  # its items counted as a would-be candidate source


@dataclass(slots=True)
class Served:
    """A published copy of the model, as a scorer would hold it."""

    interval_ms: int | None  # None: never refreshed after the warm-up (frozen)
    model: StreamRecModel
    published_at: int
    probs: list[np.ndarray] = field(default_factory=list)  # per scored tick
    ages_ms: list[float] = field(default_factory=list)  # per scored tick: age (ms) x examples


@dataclass(slots=True)
class WindowRanks:
    """The feeds ranked at one window's start: the ranked ``users`` (of ``active`` who interact
    in the window), per ranker one ``(recall, ndcg)`` per user, and candidate-recall counts."""

    users: list[str]
    active: int
    metrics: dict[str, list[tuple[float, float]]]
    candidates: CandidateRecall = field(default_factory=CandidateRecall)
    # The same users' candidates without the retrieval source (same budget); None without one.
    without_retrieval: CandidateRecall | None = None
    # Relevant items among the retriever's own top serving.retrieval_candidates (credited or not).
    retrieval_alone: CandidateRecall | None = None
    # Synthetic streams: relevant items among the hidden model's top items, at the candidate
    # budget and at the retriever's (the ceiling of any candidate generator of that size).
    truth: CandidateRecall | None = None
    truth_retrieval: CandidateRecall | None = None
    # The user_knn baseline's top knn_candidates items as a candidate source: alone, and added
    # to the candidates (credited "user_knn" where no source found the item).
    knn_alone: CandidateRecall = field(default_factory=CandidateRecall)
    with_knn: CandidateRecall = field(default_factory=CandidateRecall)


def _sample_users(relevant: dict[str, set[str]], n: int, seed: int, window: int) -> list[str]:
    users = sorted(relevant)
    if n <= 0 or len(users) <= n:
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
        self.dmp, self.optimizer = D.build_sharded(spec, self.info,
                                                   lr_sparse=settings.trainer.embedding_lr,
                                                   lr_dense=settings.trainer.dense_lr)
        self.builder = BatchBuilder(spec)
        self._redis = connect(settings.redis)
        serving = dataclasses.replace(settings.serving, feed_size=opts.k,
                                      candidates=opts.candidates or settings.serving.candidates,
                                      cache_s=0.0)
        self.ranker = FeedRanker(self._redis, settings.redis.key_prefix, ModelHolder(spec),
                                 serving=serving, features=feature_config(settings))
        self.repeat = self.ranker.limits.repeat
        # The scorers' neighbour job, run at every window start (before the feeds are ranked
        # and the window's examples read the lists): what a period of one window would give.
        self.neighbour_job = NeighbourJob(self._redis, Keys(settings.redis.key_prefix), serving)
        self.lgbm = BatchRetrained(seed)
        self.popularity = DecayedPopularity(self.profile.popularity_half_life_ms)
        self.buy_again = BuyAgain(self.profile.popularity_half_life_ms, self.profile.relevant)
        self.user_knn = UserKnn(opts.knn_half_life_ms or 16 * self.profile.window_ms,
                                self.profile.relevant, opts.knn_neighbours, opts.knn_own_weight)
        self.n_cat = spec.table_of("category").num_embeddings
        self.catalogue = ItemCatalogue(spec.dense, settings.trainer.catalogue_items) \
            if spec.retrieval_dim else None
        self.dump = None if opts.dump_dir is None else CandidateDump(
            spec.dense, opts.dump_dir / f"candidates-{self.profile.name}.npz")

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
                     models: dict[str, StreamRecModel]) -> WindowRanks:
        """Every ranker's top K at ``now_ms`` for the window's (sampled) users, scored against
        their interactions in the window; users are scored ``rank_batch_users`` at a time."""
        users = _sample_users(relevant, self.opts.rank_users, self.seed, window)
        out = WindowRanks(users, len(relevant), {name: [] for name in RANKERS})
        if not users:
            return out
        popular = self.popularity.ranked()
        retrieval = self._retrieval(models["continuous"])
        if retrieval is not None:
            out.without_retrieval, out.retrieval_alone = CandidateRecall(), CandidateRecall()
        if self.stream.truth_at is not None:
            out.truth, out.truth_retrieval = CandidateRecall(), CandidateRecall()
        step = max(1, self.opts.rank_batch_users)
        for start in range(0, len(users), step):
            self._rank_users(users[start:start + step], now_ms, relevant, models, popular, out,
                             retrieval)
        return out

    def _retrieval(self, model: StreamRecModel) -> Retrieval | None:
        """``model``'s retriever over the items trained on so far (None without either)."""
        if model.retriever is None or self.catalogue is None or not len(self.catalogue):
            return None
        ids, vectors = self.catalogue.vectors(model.retriever)
        serving = self.ranker.limits
        return Retrieval(model.retriever, RetrievalIndex(
            ids, vectors, serving.retrieval_exact_max_items, serving.retrieval_nprobe))

    def _rank_users(self, users: list[str], now_ms: int, relevant: dict[str, set[str]],
                    models: dict[str, StreamRecModel], popular: list[str], out: WindowRanks,
                    retrieval: Retrieval | None) -> None:
        k = self.opts.k
        cb: CandidateBatch = self.ranker.candidate_batch(users, now_ms, retrieval)
        scores: dict[str, dict[int, np.ndarray]] = {}
        if cb.scored:
            for name, model in models.items():
                scores[name] = cb.split(self._probs(model, cb.batch))
            cat_rows = np.concatenate([p.category_rows for p in cb.parts])  # type: ignore[misc]
            scores["lightgbm"] = cb.split(self.lgbm.predict(lgbm_matrix(
                cb.batch.dense.numpy(), cat_rows)))
        top_popular = take(popular, k)
        knn = self.user_knn.scores(users, now_ms)
        if out.truth is not None and out.truth_retrieval is not None:
            self._truth_recall(users, now_ms, relevant, out.truth, out.truth_retrieval)
        dense = cb.split(cb.batch.dense.numpy()) if self.dump is not None and cb.scored else {}
        for j, user in enumerate(users):
            rel = relevant[user]
            reads = cb.reads[j].candidates
            out.candidates.add(rel, cb.cands[j])
            if out.without_retrieval is not None and out.retrieval_alone is not None:
                lim = self.ranker.limits
                out.without_retrieval.add(rel, generate(
                    dataclasses.replace(reads, retrieved=[]), lim.candidates, lim.repeat,
                    lim.covisit_candidates))
                out.retrieval_alone.add(rel, [(i, "retrieval") for i, _ in
                                              reads.retrieved[:lim.retrieval_candidates]])
            items = [i for i, _ in cb.cands[j]]
            lists = {name: (top_k(items, s[j], k) if j in s else [])
                     for name, s in scores.items()}
            excluded = excluded_items(reads, self.repeat)
            lists["popularity"] = top_popular
            lists["popularity_repeat_policy"] = take(popular, k, excluded)
            lists["buy_again"] = self.buy_again.ranking(user, now_ms, k, popular)
            own_knn = {i: v for i, v in knn[j].items() if i not in excluded} if excluded \
                else knn[j]  # what serving.repeat keeps out of feeds, as for popularity
            lists["user_knn"] = best_then(own_knn, k, (p for p in popular if p not in excluded))
            knn_top = best_then(own_knn, self.opts.knn_candidates)
            out.knn_alone.add(rel, [(i, "user_knn") for i in knn_top])
            out.with_knn.add(rel, [*cb.cands[j], *((i, "user_knn") for i in knn_top)])
            if self.dump is not None and j in scores.get("continuous", {}):
                self.dump.add(now_ms, user, cb.cands[j], rel, dense[j],
                              {**{name: s[j] for name, s in scores.items()},
                               "user_knn": np.array([knn[j].get(i, 0.0) for i in items])},
                              self.buy_again.scores(user, now_ms))
            lists["covisit"] = covisit_ranking(reads.recent, reads.covisit, k, exclude=excluded)
            for name in RANKERS:
                ranked = lists.get(name, [])
                out.metrics[name].append((recall_at_k(ranked, rel, k), ndcg_at_k(ranked, rel, k)))

    def _truth_recall(self, users: list[str], now_ms: int, relevant: dict[str, set[str]],
                      at_budget: CandidateRecall, at_retrieval: CandidateRecall) -> None:
        """Count the users' relevant items among the hidden model's top items at ``now_ms``:
        as many as the candidate budget, and as the retriever's."""
        assert self.stream.truth_at is not None
        truth = self.stream.truth_at(now_ms)
        budget, retrieval = self.ranker.n_candidates, self.ranker.limits.retrieval_candidates
        for user in users:
            top = truth.top_item_ids(user, max(budget, retrieval))
            at_budget.add(relevant[user], [(i, "truth") for i in top[:budget]])
            at_retrieval.add(relevant[user], [(i, "truth") for i in top[:retrieval]])

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
        ranked: dict[int, WindowRanks] = {}
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
                if self.neighbour_job.cfg.neighbour_interval_s > 0:
                    self.neighbour_job.run(t0 + w * prof.window_ms)
                ranked[w] = self._rank_window(w, t0 + w * prof.window_ms, relevant.get(w, {}),
                                              {"continuous": sweep[0].model,
                                               "frozen": frozen.model})
            tick_events = ticks[tick]
            examples = self.ingest.feed(tick_events)
            self.popularity.update(tick_events)
            self.buy_again.update(tick_events)
            self.user_knn.update(tick_events)
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
                    sgd_step(self.dmp, self.optimizer, chunk, self.info.device)
                    steps += 1
                examples_total += len(examples)
                if self.catalogue is not None:
                    self.catalogue.observe([ex["item_id"] for ex in examples], batch)
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
            raise StreamrecError(_no_examples(events, self.settings, self.ingest.dead_lettered))
        if self.dump is not None:
            self.say(f"  candidates written to {self.dump.write()}")
        return self._summarise(
            np.concatenate(labels), np.concatenate(example_ts), sweep, frozen,
            np.concatenate(lgbm_probs), ranked, t0, warm_end,
            {"examples": examples_total, "train_steps": steps, "lgbm_fits": self.lgbm.fits,
             "elapsed_s": round(time.perf_counter() - started, 1)})

    # -- results --------------------------------------------------------------------------
    def _summarise(self, y: np.ndarray, ts: np.ndarray, sweep: list[Served], frozen: Served,
                   lgbm: np.ndarray, ranked: dict[int, WindowRanks],
                   t0: int, warm_end: int, counts: dict[str, Any]) -> dict[str, Any]:
        prof, k = self.profile, self.opts.k
        probs = {"continuous": np.concatenate(sweep[0].probs),
                 "frozen": np.concatenate(frozen.probs), "lightgbm": lgbm}
        after = ts >= warm_end
        win = (ts - t0) // prof.window_ms

        def pooled(mask: np.ndarray) -> dict[str, dict[str, float | None]]:
            return {name: {"auc": _rnd(auc(p[mask], y[mask])) if mask.any() else None,
                           "logloss": _rnd(log_loss(p[mask], y[mask])) if mask.any() else None}
                    for name, p in probs.items()}

        overall = pooled(after)
        windows = []
        for w in sorted(set(win.tolist()) | set(ranked)):
            start = t0 + w * prof.window_ms
            m = win == w
            entry: dict[str, Any] = {"window": w, "start_ms": start, "examples": int(m.sum()),
                                     "after_warmup": start >= warm_end}
            entry.update({f"auc_{n}": v["auc"] for n, v in pooled(m).items()})
            wr = ranked.get(w)
            for name, pairs in (wr.metrics.items() if wr else ()):
                entry[f"recall_{name}"] = _rnd(float(np.mean([r for r, _ in pairs]))) \
                    if pairs else None
                entry[f"ndcg_{name}"] = _rnd(float(np.mean([n for _, n in pairs]))) \
                    if pairs else None
            entry["ranked_users"] = len(wr.users) if wr else 0
            entry["active_users"] = wr.active if wr else 0
            if wr:
                entry["candidate_recall"] = wr.candidates.as_dict()
                if wr.truth is not None:
                    entry["candidate_recall"]["ground_truth"] = wr.truth.as_dict()["total"]
            windows.append(entry)

        sweep_out = []
        for s in [*sweep, frozen]:
            p = np.concatenate(s.probs)
            sweep_out.append({
                "publish_interval_s": None if s.interval_ms is None else s.interval_ms / 1000,
                "label": "never (frozen)" if s.interval_ms is None else
                _human(s.interval_ms),
                "auc": _rnd(auc(p[after], y[after])),
                "logloss": _rnd(log_loss(p[after], y[after])),
                "mean_model_age_s": round(sum(s.ages_ms) / max(1, len(p)) / 1000, 1),
            })
        ctr = float(y[after].mean()) if after.any() else float("nan")
        return {
            "auc": {n: v["auc"] for n, v in overall.items()},
            "logloss": {n: v["logloss"] for n, v in overall.items()},
            **ranking_summary([wr for w, wr in sorted(ranked.items())
                               if t0 + w * prof.window_ms >= warm_end], k),
            "sweep": sweep_out,
            "windows": windows,
            "positive_rate_after_warmup": _rnd(ctr),
            "warmup_end_ms": warm_end,
            "first_event_ms": t0,
            "drifts_ms": self.stream.drifts_ms,
            "window_s": prof.window_ms / 1000,
            "tick_s": prof.tick_ms / 1000,
            "time_scales": {
                "tick": format_duration_ms(prof.tick_ms),
                "window": format_duration_ms(prof.window_ms),
                "half_life": format_duration_ms(prof.popularity_half_life_ms),
                "lgbm_every": format_duration_ms(prof.lgbm_every_ms),
                "user_knn_half_life": format_duration_ms(self.user_knn.half_life_ms),
                "warmup_share": self.opts.warmup_share, "from": prof.scales_from},
            "label_mode": self.settings.stream.label_mode,
            "relevant_types": list(prof.relevant),
            "repeat_policy": self.repeat,
            # What this run changed of the model, labelling and serving defaults (its --set
            # flags and the profile's own), so that a result file says what it measured.
            "settings_changed": _changed(self.settings, ("stream", "model", "trainer", "serving")),
            "events": len(self.stream.events),
            "dead_lettered": self.ingest.dead_lettered,
            **counts,
        }

    def close(self) -> None:
        """Close the Redis connection (the caller closes the ingest and deletes the keys)."""
        self._redis.close()


def _changed(settings: Settings, sections: Sequence[str]) -> dict[str, Any]:
    """Settings of ``sections`` whose values differ from the defaults, by dotted key."""
    default = dict((key, value) for key, value, _ in Settings.default().items())
    return {key: value for key, value, _ in settings.items()
            if key.split(".")[0] in sections and value != default[key]}


def _rnd(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 5)


def ranking_summary(windows: Sequence[WindowRanks], k: int) -> dict[str, Any]:
    """Pure: the overall ranking numbers of the windows given (those after the warm-up):

    - ``recall_at_{k}`` / ``ndcg_at_{k}``: per ranker, the mean over (user, window) pairs;
    - ``recall_at_{k}_ci95``: per ranker, its 95% interval, users as units (clipped to [0, 1]);
    - ``recall_at_{k}_minus_<baseline>_ci95``, one per :data:`BASELINES`: per other ranker, the
      95% interval of its recall minus the baseline's on the same users and windows (entirely
      above 0: it beats the baseline);
    - ``candidate_recall``: ``{"total", "by_source", "relevant_items"}`` over all those users,
      with a retriever also ``with_retrieval`` (= total) and ``without_retrieval`` (the same
      users' candidates without that source, at the same budget) and ``retrieval_alone`` (the
      share of relevant items among the retriever's own top ``serving.retrieval_candidates``);
      on a synthetic stream also ``ground_truth``: ``{"candidates", "retrieval_candidates"}``,
      the share among the hidden model's top items at the candidate budget and at the
      retriever's, the ceiling of any candidate generator of that size; and ``user_knn``:
      ``{"alone", "added"}``, the share among the ``user_knn`` baseline's top
      ``knn_candidates`` items, and among the candidates with those items added (what a
      neighbours source would give beyond the budget);
    - ``ranked``: user-window pairs and distinct users ranked.
    """
    units = [u for wr in windows for u in wr.users]
    recall: dict[str, list[float]] = {
        name: [r for wr in windows for r, _ in wr.metrics.get(name, [])] for name in RANKERS}
    ndcg = {name: [n for wr in windows for _, n in wr.metrics.get(name, [])] for name in RANKERS}
    cand, without, alone = CandidateRecall(), CandidateRecall(), CandidateRecall()
    truth, truth_retrieval = CandidateRecall(), CandidateRecall()
    knn_alone, with_knn = CandidateRecall(), CandidateRecall()
    for wr in windows:
        cand.merge(wr.candidates)
        knn_alone.merge(wr.knn_alone)
        with_knn.merge(wr.with_knn)
        if wr.without_retrieval is not None and wr.retrieval_alone is not None:
            without.merge(wr.without_retrieval)
            alone.merge(wr.retrieval_alone)
        if wr.truth is not None and wr.truth_retrieval is not None:
            truth.merge(wr.truth)
            truth_retrieval.merge(wr.truth_retrieval)
    candidate_recall = cand.as_dict()
    if without.relevant:  # a retriever ran: both at the same candidate budget
        candidate_recall["with_retrieval"] = candidate_recall["total"]
        candidate_recall["without_retrieval"] = without.as_dict()["total"]
        candidate_recall["retrieval_alone"] = alone.as_dict()["total"]
    if knn_alone.relevant:
        candidate_recall["user_knn"] = {"alone": knn_alone.as_dict()["total"],
                                        "added": with_knn.as_dict()["total"]}
    if truth.relevant:
        candidate_recall["ground_truth"] = {
            "candidates": truth.as_dict()["total"],
            "retrieval_candidates": truth_retrieval.as_dict()["total"]}
    ci: dict[str, list[float | None] | None] = {}
    diffs: dict[str, dict[str, list[float | None] | None]] = {b: {} for b in BASELINES}
    for name in RANKERS:
        iv = mean_ci95(recall[name], units)
        ci[name] = iv.rounded(clip=(0.0, 1.0)) if iv else None
        for base in BASELINES:
            if name != base:
                d = mean_ci95(np.subtract(recall[name], recall[base]), units)
                diffs[base][name] = d.rounded() if d else None
    return {
        f"recall_at_{k}": {n: _rnd(float(np.mean(v))) if v else None for n, v in recall.items()},
        f"ndcg_at_{k}": {n: _rnd(float(np.mean(v))) if v else None for n, v in ndcg.items()},
        f"recall_at_{k}_ci95": ci,
        **{f"recall_at_{k}_minus_{base}_ci95": diffs[base] for base in BASELINES},
        "candidate_recall": candidate_recall,
        "ranked": {"user_windows": len(units), "users": len(set(units))},
    }


def _no_examples(events: Sequence[Event], settings: Settings, dead_lettered: int) -> str:
    label_mode = settings.stream.label_mode
    types = Counter(e.event_type for e in events)
    shown = ", ".join(f"{types[t]} {t}s" for t in ("view", "click", "purchase"))
    msg = f"no labelled examples: {len(events)} events ({shown})"
    if dead_lettered:
        msg += f", {dead_lettered} of them dead-lettered by the ingest worker"
    if label_mode == "implicit":
        msg += "; implicit labels need clicks or purchases (each is a positive)"
        if types["view"]:
            msg += ": try --label-mode exposure"
        return msg
    window_ms = settings.stream.attribution_window_ms
    span_ms = events[-1].ts - events[0].ts if events else 0
    msg += ("; exposure labels need views, each labelled once event time passes the view + "
            f"stream.attribution_window_ms ({format_duration_ms(window_ms)}; the log spans "
            f"{format_duration_ms(max(1, span_ms))})")
    if types["click"] + types["purchase"]:
        msg += ": try --label-mode implicit, or a shorter --set stream.attribution_window_ms"
    return msg


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

