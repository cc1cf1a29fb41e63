"""Labelling rules: joining events into training examples. Pure (no I/O).

Exposure mode (logs with ``view`` events)
    A view of item *i* by user *u* at ``t`` is an exposure. It is labelled ``click = 1`` if a
    click *or* purchase of *i* by *u* has event time in ``[t, t + W]`` (both ends included), and
    ``purchase = 1`` if a purchase has. The example is emitted once the partition's event-time
    watermark (``max event time seen - allowed lateness``) passes ``t + W``; until then the
    exposure is pending. Follow-ups that arrive before their view (out of order, within the
    lateness) are kept until the watermark passes them, so the view still gets its label.

Implicit mode (logs without exposures, e.g. purchases only)
    Each click or purchase gives a positive example at once, plus ``negatives`` examples for items
    sampled from the items trending now (``sampled = true``); see :func:`sample_negatives`.

Features are snapshotted when the exposure (or interaction) is processed, before its own update:
for a stream in event-time order they are exactly the state as of the event. A view processed
*after* events with later event times (out of order, within the allowed lateness) sees those
events too; that leakage is bounded by ``allowed_lateness_ms`` and such views are counted.

Counted, never silently dropped: ``out_of_order`` (event time below the max seen), ``late``
(below the watermark), ``unmatched_followups`` (a click/purchase with no open exposure: no view,
or the window already closed).
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from streaming.contract.events import Event
from streaming.contract.examples import Example
from streaming.features.state import SEP


@dataclass(frozen=True, slots=True)
class LabelConfig:
    """Labelling rules (from ``stream.*``): mode, attribution window and allowed lateness (ms),
    and implicit mode's negatives per positive and how they are sampled."""

    mode: str = "exposure"  # or "implicit"
    window_ms: int = 30 * 60 * 1000
    allowed_lateness_ms: int = 10_000
    negatives: int = 4
    # "uniform": negatives uniform over the pool, so that a model's scores rank items by the
    # probability of an interaction (what a feed ranks by); "popularity": weighted by count,
    # so scores discount popularity (favours the tail, costs recall).
    negative_sampling: str = "uniform"


def pair_key(user_id: str, item_id: str) -> str:
    """The joiner's key of a (user, item) pair: ``<user>\\x1f<item>`` (``SEP`` in between)."""
    return f"{user_id}{SEP}{item_id}"


@dataclass(slots=True)
class Exposure:
    """A pending view. ``features`` and ``recent`` are the model inputs as of the view;
    ``features`` is their JSON text (an object by name), decoded only when the exposure closes:
    a pending exposure is read and written back whenever its pair sees another event, and
    parsing and re-encoding its 25 numbers each time was about half of that cost."""

    view_id: str
    user_id: str
    item_id: str
    ts: int
    category: str | None
    features: str
    recent: list[str]
    offset: int
    click_ts: int | None = None
    purchase_ts: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The stored form (JSON, short keys) kept in the partition's pending-exposure hash."""
        return {
            "v": self.view_id, "u": self.user_id, "i": self.item_id, "ts": self.ts,
            "cat": self.category, "f": self.features, "r": self.recent, "o": self.offset,
            "c": self.click_ts, "p": self.purchase_ts,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Exposure:
        """Inverse of :meth:`to_dict`. Also reads the form before the features were kept as text
        (an object), so exposures pending across an upgrade still close."""
        f = d["f"]
        if not isinstance(f, str):
            f = orjson.dumps(f).decode()
        return cls(d["v"], d["u"], d["i"], d["ts"], d["cat"], f, d["r"], d["o"], d["c"], d["p"])

    def record_followup(self, kind: str, ts: int, window_ms: int) -> bool:
        """Attribute a follow-up of ``kind`` at ``ts`` (ms) if it lies in ``[self.ts, self.ts +
        window_ms]``; returns whether it does. A purchase counts as a click too; the earliest time
        of each is kept."""
        if not self.ts <= ts <= self.ts + window_ms:
            return False
        if kind in ("click", "purchase"):
            self.click_ts = ts if self.click_ts is None else min(self.click_ts, ts)
        if kind == "purchase":
            self.purchase_ts = ts if self.purchase_ts is None else min(self.purchase_ts, ts)
        return True


@dataclass(slots=True)
class JoinState:
    """The part of one partition's joiner state that a batch touches (loaded from the store)."""

    max_ts: int | None
    pending: dict[str, list[Exposure]] = field(default_factory=dict)
    followups: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    changed_pairs: set[str] = field(default_factory=set)
    changed_followups: set[str] = field(default_factory=set)

    def watermark(self, cfg: LabelConfig) -> int | None:
        """The event-time watermark, ``max_ts - allowed_lateness_ms`` (ms); None before any event."""
        return None if self.max_ts is None else self.max_ts - cfg.allowed_lateness_ms


def observe(state: JoinState, event: Event, cfg: LabelConfig, counts: Counter[str]) -> None:
    """Update the event-time bookkeeping for one accepted event (call before join rules)."""
    if state.max_ts is not None and event.ts < state.max_ts:
        counts["out_of_order"] += 1
        wm = state.watermark(cfg)
        if wm is not None and event.ts < wm:
            counts["late"] += 1
    if state.max_ts is None or event.ts > state.max_ts:
        state.max_ts = event.ts


def on_view(state: JoinState, exposure: Exposure, cfg: LabelConfig) -> None:
    """Open ``exposure``: attribute the pair's follow-ups seen before it (out of order), then keep
    it pending until its window closes."""
    key = pair_key(exposure.user_id, exposure.item_id)
    for kind, ts in state.followups.get(key, ()):
        exposure.record_followup(kind, ts, cfg.window_ms)
    state.pending.setdefault(key, []).append(exposure)
    state.changed_pairs.add(key)


def on_followup(state: JoinState, event: Event, cfg: LabelConfig, counts: Counter[str]) -> None:
    """A click or purchase: attribute it to the pair's pending exposures (counted as
    ``unmatched_followups`` when none takes it) and keep it for views that arrive later."""
    key = pair_key(event.user_id, event.item_id)
    matched = False
    for exposure in state.pending.get(key, ()):
        matched |= exposure.record_followup(event.event_type, event.ts, cfg.window_ms)
    if matched:
        state.changed_pairs.add(key)
    else:
        counts["unmatched_followups"] += 1
    # Kept for views that arrive after it (out of order); dropped once below the watermark.
    state.followups.setdefault(key, []).append((event.event_type, event.ts))
    state.changed_followups.add(key)


def close_due(state: JoinState, cfg: LabelConfig, trace_now_ms: int) -> list[Example]:
    """Emit and remove every exposure whose window ended at or before the watermark."""
    wm = state.watermark(cfg)
    if wm is None:
        return []
    examples = []
    for key, exposures in state.pending.items():
        keep = []
        for e in exposures:
            if e.ts + cfg.window_ms <= wm:
                examples.append(Example(
                    example_id=e.view_id, user_id=e.user_id, item_id=e.item_id,
                    category=e.category, ts=e.ts, click=int(e.click_ts is not None),
                    purchase=int(e.purchase_ts is not None), sampled=False,
                    features=orjson.loads(e.features), recent=e.recent,
                    trace={"event_ts": e.ts, "closed_ms": trace_now_ms, "offset": e.offset},
                ))
            else:
                keep.append(e)
        if len(keep) != len(exposures):
            state.pending[key] = keep
            state.changed_pairs.add(key)
    for key, followups in state.followups.items():
        keep_f = [(k, ts) for k, ts in followups if ts >= wm]
        if len(keep_f) != len(followups):
            state.followups[key] = keep_f
            state.changed_followups.add(key)
    examples.sort(key=lambda ex: (ex.ts, ex.example_id))
    return examples


def earliest_deadline(exposures: Sequence[Exposure], cfg: LabelConfig) -> int | None:
    """The earliest window end (``ts + window_ms``, ms) among ``exposures``; None when empty."""
    return min((e.ts + cfg.window_ms for e in exposures), default=None)


def sample_negatives(
    event_id: str, positive_item: str, pool: Sequence[tuple[str, float]], k: int,
    weighted: bool = False,
) -> list[str]:
    """``k`` distinct items from ``pool`` (``[(item, weight)]``, e.g. the trending list),
    excluding the positive item: uniformly, or by weight when ``weighted``.

    Seeded by the event id, so a redelivered event samples the same negatives.
    """
    candidates = [(item, w) for item, w in pool if item != positive_item and w > 0]
    if not candidates or k <= 0:
        return []
    rng = random.Random(_seed(event_id))
    chosen: list[str] = []
    items = [c[0] for c in candidates]
    weights = [c[1] if weighted else 1.0 for c in candidates]
    for _ in range(min(k, len(items))):
        idx = rng.choices(range(len(items)), weights=weights)[0]
        chosen.append(items.pop(idx))
        weights.pop(idx)
    return chosen


def sample_mixed_negatives(
    event_id: str, positive_item: str, own_items: Sequence[str],
    pool: Sequence[tuple[str, float]], k: int, hard_share: float | None, weighted: bool = False,
) -> list[str]:
    """``k`` negatives for a positive, from the user's own candidates (``own_items``: items the
    user already interacted with, which the scorer ranks as the "again" and "recent" sources)
    and from ``pool`` (the trending list, drawn as :func:`sample_negatives` does).

    ``hard_share=None`` (proportional): every own or pool item is equally likely, so the own
    items' expected share is ``|own| / (|own| + |pool|)``. A pointwise model learns
    ``P(positive) / P(sampled)`` per item; with equal sampling rates its scores rank the
    scorer's candidates as they are, while over-sampling own items would teach it to discount
    exactly the repeats a feed should show. A number: ``round(k * hard_share)`` own items.
    Without own items among the negatives, "the user had it before" would look like a sure
    positive.

    Seeded by the event id (a redelivered event samples the same negatives); never the positive
    item, never one item twice; a short own list is topped up from the pool."""
    own = [i for i in dict.fromkeys(own_items) if i != positive_item]
    if hard_share is None:
        own_set = set(own)  # pools hold thousands of items, own lists hundreds
        pool_n = sum(1 for i, w in pool if w > 0 and i != positive_item and i not in own_set)
        draws = random.Random(_seed(event_id + ":mix")).random
        n_hard = sum(draws() < len(own) / max(1, len(own) + pool_n) for _ in range(k))
    else:
        n_hard = min(round(k * hard_share), k)
    hard = sample_negatives(event_id + ":own", positive_item, [(i, 1.0) for i in own],
                            n_hard) if n_hard else []
    chosen = set(hard)
    rest = [(i, w) for i, w in pool if i not in chosen]
    return hard + sample_negatives(event_id, positive_item, rest, k - len(hard), weighted)


def _seed(text: str) -> int:
    """A stable 64-bit seed (Python's ``hash`` of a str changes between processes)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
