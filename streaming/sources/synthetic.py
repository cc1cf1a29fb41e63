"""Seedable synthetic event stream with a known ground truth.

Users have latent interests over categories; item popularity is Zipf-distributed; each view turns
into a click, and a click into a purchase, with probabilities from a hidden logistic model of the
user's interest in the item's category and the item's quality. Follow-ups arrive seconds to
minutes after the view (event time), so the stream exercises attribution windows.

Concept drift at known points (``drift_every`` views): every user's interests move to other
categories (a random permutation of the categories), a share of items get a new hidden quality,
and ``new_items_per_drift`` new items arrive and take the top popularity ranks. The ground truth
(:meth:`SyntheticStream.click_probability`) always describes the current regime; ``drifts``
records when each drift happened (view number and event time), for plots.
:meth:`SyntheticStream.truth` freezes the current regime as a :class:`GroundTruth`, whose
:meth:`GroundTruth.top_items` are the items a user is most likely to click next: the ceiling of
any candidate generator (``streamrec eval`` reports the candidate recall they reach).

Pure: no I/O, no wall clock. The same seed gives the same events.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
import random
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from streaming.contract.events import Event


@dataclass(frozen=True, slots=True)
class SyntheticConfig:
    """The synthetic world: sizes, popularity and interest skew, the hidden click and purchase
    model, follow-up delays (ms), session gap (ms), and drift."""

    n_users: int = 2_000
    n_items: int = 5_000
    n_categories: int = 20
    zipf_a: float = 1.1  # item popularity exponent
    interest_concentration: float = 0.3  # Dirichlet alpha; small = focused users
    explore_prob: float = 0.3  # share of views drawn from global popularity
    click_bias: float = -2.2  # logit offset: base CTR around 10%
    click_interest_weight: float = 1.2
    purchase_bias: float = -1.5
    click_delay_ms: tuple[int, int] = (1_000, 60_000)
    purchase_delay_ms: tuple[int, int] = (10_000, 300_000)
    session_gap_ms: int = 30 * 60 * 1000
    drift_every: int = 0  # views between concept drifts; 0 = a stationary stream
    new_items_per_drift: int = 250
    quality_redraw_share: float = 0.5  # share of items whose hidden quality is re-drawn
    # Derive each user's interests on first use from a per-user seed, keeping only the most
    # recently used ``lazy_cache_users`` in memory: memory stays bounded at a million users
    # (eagerly, 1 M users x 20 categories take ~1.3 GB). A different stream than the eager one
    # for the same seed, so off by default (results stay comparable).
    lazy_users: bool = False
    lazy_cache_users: int = 20_000


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@dataclass(frozen=True, slots=True)
class GroundTruth:
    """One regime of the hidden model, frozen (copies, so later drifts do not change it):
    ``interest`` ``U x C`` per user and category, per item (``N``) its ``category``, hidden
    ``quality`` and popularity ``weight``. Eager-users streams only (``interest`` is dense)."""

    config: SyntheticConfig
    interest: np.ndarray
    category: np.ndarray
    quality: np.ndarray
    weight: np.ndarray
    # Per item: its category's total popularity weight (the denominator of a category pick).
    category_weight: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        total = np.bincount(self.category, weights=self.weight,
                            minlength=self.config.n_categories)
        object.__setattr__(self, "category_weight", total[self.category])

    def click_scores(self, user: int) -> np.ndarray:
        """``N`` float64: the chance that one view of ``user`` is a view of item ``i`` that turns
        into a click (P(view i) x P(click | view i), as :meth:`SyntheticStream.events` draws
        them). Over a window of views an item's chance of a click is monotone in this, so its
        top items are the best candidate set of any size for the window's clicks (and the
        purchases that follow them) when the regime holds through the window. The click part
        is :meth:`SyntheticStream.click_probability` over all items at once (a unit test holds
        the two equal)."""
        cfg = self.config
        interest = self.interest[user][self.category]
        p_view = self.weight * (cfg.explore_prob / self.weight.sum()
                                + (1.0 - cfg.explore_prob) * interest / self.category_weight)
        logit = (cfg.click_bias + cfg.click_interest_weight
                 * np.log(interest * cfg.n_categories + 1e-3) + self.quality)
        return p_view / (1.0 + np.exp(-logit))

    def top_items(self, user: int, k: int) -> list[int]:
        """The ``k`` items of :meth:`click_scores` with the highest chance, best first."""
        scores = self.click_scores(user)
        k = min(k, len(scores))
        if k <= 0:
            return []
        top = np.argpartition(-scores, k - 1)[:k]
        return top[np.argsort(-scores[top], kind="stable")].tolist()

    def top_item_ids(self, user_id: str, k: int) -> list[str]:
        """:meth:`top_items` in the stream's ids: ``user_id`` as its events carry it (``u<n>``),
        items as ``i<n>``. Raises ``ValueError`` for an id the stream does not make."""
        if not user_id.startswith("u") or not user_id[1:].isdigit():
            raise ValueError(f"{user_id!r} is not a synthetic user id")
        return [f"i{i}" for i in self.top_items(int(user_id[1:]), k)]


class SyntheticStream:
    """Generates events in event-time order. ``rate`` is views per second of event time.
    With ``record_truth``, every regime's :class:`GroundTruth` is kept for :meth:`truth_at`."""

    def __init__(self, seed: int = 0, config: SyntheticConfig | None = None,
                 record_truth: bool = False) -> None:
        self.seed = seed
        self.config = cfg = config or SyntheticConfig()
        rng = random.Random(seed)
        self._rng = rng
        # Typed arrays (8 bytes a value instead of a 32-byte float object): a 1 M catalogue.
        self.item_category = array("l", (rng.randrange(cfg.n_categories)
                                         for _ in range(cfg.n_items)))
        self.item_quality = array("d", (rng.gauss(0.0, 0.5) for _ in range(cfg.n_items)))
        self.item_price = array("d", (round(math.exp(rng.gauss(3.0, 0.8)), 2)
                                      for _ in range(cfg.n_items)))
        # Popularity rank is a random permutation so that item ids carry no signal.
        ranks = list(range(cfg.n_items))
        rng.shuffle(ranks)
        self._weights = array("d", (1.0 / (r + 1) ** cfg.zipf_a for r in ranks))
        del ranks
        self._index_items()
        self.drifts: list[tuple[int, int]] = []  # (view number, event time ms) of each drift
        self._perm = list(range(cfg.n_categories))  # lazy users: the drifts' permutations so far
        if cfg.lazy_users:
            self.user_interest: Any = _LazyUsers(self)
            self._user_cum: Any = _LazyUsers(self, cumulative=True)
        else:
            self.user_interest = [self._dirichlet(cfg.n_categories) for _ in range(cfg.n_users)]
            self._user_cum = [list(itertools.accumulate(v)) for v in self.user_interest]
        # Some users are far more active than others.
        self._activity_cum = list(
            itertools.accumulate(1.0 / (r + 1) ** 0.8 for r in range(cfg.n_users))
        )
        self._truths: list[GroundTruth] | None = [self.truth()] if record_truth else None

    @property
    def n_items(self) -> int:
        """The number of items so far (each drift adds ``new_items_per_drift``)."""
        return len(self.item_category)

    def _index_items(self) -> None:
        weights = self._weights
        self._item_cum = array("d", itertools.accumulate(weights))
        by_cat: list[array[int]] = [array("l") for _ in range(self.config.n_categories)]
        for item, cat in enumerate(self.item_category):
            by_cat[cat].append(item)
        self._cat_items = by_cat
        self._cat_cum = [array("d", itertools.accumulate(weights[i] for i in items))
                         for items in by_cat]

    def drift(self, view_n: int, ts: int) -> None:
        """Change the hidden model: interests permute, qualities change, new items arrive."""
        cfg, rng = self.config, self._rng
        perm = list(range(cfg.n_categories))
        rng.shuffle(perm)
        if cfg.lazy_users:  # applied on access: compose with the earlier drifts'
            self._perm = [self._perm[perm[c]] for c in range(cfg.n_categories)]
            self.user_interest.clear()
            self._user_cum.clear()
        else:
            self.user_interest = [[v[perm[c]] for c in range(cfg.n_categories)]
                                  for v in self.user_interest]
            self._user_cum = [list(itertools.accumulate(v)) for v in self.user_interest]
        for item in range(self.n_items):
            if rng.random() < cfg.quality_redraw_share:
                self.item_quality[item] = rng.gauss(0.0, 0.5)
        top = max(self._weights)
        for _ in range(cfg.new_items_per_drift):
            self.item_category.append(rng.randrange(cfg.n_categories))
            self.item_quality.append(rng.gauss(0.0, 0.5))
            self.item_price.append(round(math.exp(rng.gauss(3.0, 0.8)), 2))
            # New arrivals are the hot items: the head of the Zipf curve, in random order.
            rank = rng.randrange(2 * cfg.new_items_per_drift)
            self._weights.append(top / (rank + 1) ** cfg.zipf_a)
        self._index_items()
        self.drifts.append((view_n, ts))
        if self._truths is not None:
            self._truths.append(self.truth())

    def _dirichlet(self, k: int, rng: random.Random | None = None) -> list[float]:
        rng = rng or self._rng
        draws = [rng.gammavariate(self.config.interest_concentration, 1.0) for _ in range(k)]
        total = sum(draws) or 1.0
        return [d / total for d in draws]

    @staticmethod
    def _pick(rng: random.Random, cum: Sequence[float]) -> int:
        return bisect.bisect_left(cum, rng.random() * cum[-1])

    def truth(self) -> GroundTruth:
        """The current regime of the hidden model, frozen (see :class:`GroundTruth`). Raises
        ``ValueError`` for a lazy-users stream, whose interests are not held in memory."""
        if self.config.lazy_users:
            raise ValueError("a lazy-users stream keeps no dense ground truth")
        return GroundTruth(self.config, np.array(self.user_interest, dtype=np.float64),
                           np.array(self.item_category, dtype=np.int64),
                           np.array(self.item_quality, dtype=np.float64),
                           np.array(self._weights, dtype=np.float64))

    def truth_at(self, ts_ms: int) -> GroundTruth:
        """The regime in force at event time ``ts_ms`` (a drift at ``ts_ms`` included). Raises
        ``ValueError`` unless the stream was made with ``record_truth``."""
        if self._truths is None:
            raise ValueError("the stream was made without record_truth")
        return self._truths[bisect.bisect_right([ts for _, ts in self.drifts], ts_ms)]

    def click_probability(self, user: int, item: int) -> float:
        """Ground truth P(click | view) for evaluation."""
        cfg = self.config
        interest = self.user_interest[user][self.item_category[item]] * cfg.n_categories
        logit = (
            cfg.click_bias
            + cfg.click_interest_weight * math.log(interest + 1e-3)
            + self.item_quality[item]
        )
        return _sigmoid(logit)

    def live(self, rate: float, clock: Callable[[], float] = time.time) -> Iterator[Event]:
        """:meth:`events` for a live run: each event is stamped with the wall-clock time (ms) at
        which it is handed to the sender, as an app would stamp it. (:meth:`events` spaces views
        by ``1 / rate`` of event time and adds their follow-ups, so a sender pacing *all* events
        at ``rate`` would fall ever further behind the clock, and freshness measured from
        event time would grow with the run's length.)"""
        for event in self.events(int(clock() * 1000), rate):
            yield replace(event, ts=int(clock() * 1000))

    def events(self, start_ms: int, rate: float, limit: int | None = None) -> Iterator[Event]:
        """Views at ``rate`` per second of event time from ``start_ms`` plus their follow-ups,
        merged in event-time order. ``limit`` bounds the total number of events yielded.
        One stream per instance: the generator's state (and its drifts) moves on as it runs."""
        cfg = self.config
        rng = self._rng
        step_ms = 1000.0 / rate
        pending: list[tuple[int, int, Event]] = []  # (ts, seq, event): a min-heap on event time
        seq = itertools.count()
        last_seen: dict[int, int] = {}
        session_of: dict[int, int] = {}
        emitted = 0
        for n in itertools.count():
            ts = start_ms + int(n * step_ms)
            while pending and pending[0][0] <= ts:
                yield heapq.heappop(pending)[2]
                emitted += 1
                if limit is not None and emitted >= limit:
                    return
            if cfg.drift_every and n and n % cfg.drift_every == 0:
                self.drift(n, ts)
            user = self._pick(rng, self._activity_cum)
            if rng.random() < cfg.explore_prob:
                item = self._pick(rng, self._item_cum)
            else:
                cat = self._pick(rng, self._user_cum[user])
                items = self._cat_items[cat] or [self._pick(rng, self._item_cum)]
                cum = self._cat_cum[cat] or [1.0]
                item = items[self._pick(rng, cum)]
            if ts - last_seen.get(user, -(10**15)) > cfg.session_gap_ms:
                session_of[user] = session_of.get(user, 0) + 1
            last_seen[user] = ts
            session = f"s{self.seed}-{user}-{session_of[user]}"
            view = self._event(next(seq), user, item, "view", ts, session)
            yield view
            emitted += 1
            if limit is not None and emitted >= limit:
                return
            if rng.random() < self.click_probability(user, item):
                click_ts = ts + rng.randint(*cfg.click_delay_ms)
                click = self._event(next(seq), user, item, "click", click_ts, session)
                heapq.heappush(pending, (click_ts, next(seq), click))
                buy_logit = cfg.purchase_bias + self.item_quality[item]
                if rng.random() < _sigmoid(buy_logit):
                    buy_ts = click_ts + rng.randint(*cfg.purchase_delay_ms)
                    buy = self._event(next(seq), user, item, "purchase", buy_ts, session)
                    heapq.heappush(pending, (buy_ts, next(seq), buy))

    def _event(self, n: int, user: int, item: int, kind: str, ts: int, session: str) -> Event:
        purchase = kind == "purchase"
        return Event(
            event_id=f"syn-{self.seed}-{n}",
            user_id=f"u{user}",
            item_id=f"i{item}",
            event_type=kind,
            ts=ts,
            price=self.item_price[item],
            qty=1 if purchase else None,
            category=f"c{self.item_category[item]}",
            session_id=session,
        )


class _LazyUsers:
    """``user -> interests`` (or their running sums) of a lazy-users stream, derived on first
    use from ``(seed, user)`` and the drifts' permutation; the newest ``lazy_cache_users`` are
    kept (LRU), so memory does not grow with the number of users."""

    def __init__(self, stream: SyntheticStream, cumulative: bool = False) -> None:
        self._stream = stream
        self._cumulative = cumulative
        self._cache: OrderedDict[int, list[float]] = OrderedDict()

    def __getitem__(self, user: int) -> list[float]:
        hit = self._cache.get(user)
        if hit is not None:
            self._cache.move_to_end(user)
            return hit
        s = self._stream
        k = s.config.n_categories
        base = s._dirichlet(k, random.Random(f"{s.seed}:{user}"))
        value = [base[s._perm[c]] for c in range(k)]
        if self._cumulative:
            value = list(itertools.accumulate(value))
        self._cache[user] = value
        if len(self._cache) > s.config.lazy_cache_users:
            self._cache.popitem(last=False)
        return value

    def clear(self) -> None:
        """Forget the cached users (after a drift changed the permutation)."""
        self._cache.clear()
