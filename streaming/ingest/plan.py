"""Planning one batch of one partition: pure functions from (messages, state read) to the ops,
outbox records and counters that :mod:`streaming.ingest.state_store` applies atomically.

No I/O: the state a batch needs is read beforehand (:class:`~streaming.ingest.types.BatchReads`)
and key names come from :class:`~streaming.contract.names.Keys`, so every step is unit-tested
without Redis. The steps, per accepted event in offset order:

1. :func:`label_event` snapshots the model inputs an example needs (before the event's own
   update) and applies the labelling rules (:mod:`streaming.features.labels`);
2. :func:`feature_ops` updates the in-memory feature state and emits the matching ops;

then, for the whole batch, :class:`Snapshots` computes every snapshot's dense features in one
vectorised call, the label windows that closed become examples, and :func:`join_ops` and
:func:`bookkeeping_ops` persist the joiner state, the event-time watermark, the dedup window and
the counters. An op is a list ``[name, key, args...]`` interpreted by ``lua/apply.lua``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import orjson

from streaming.contract.events import DEFAULT_LIMITS, EVENT_TYPES, Event, Limits
from streaming.contract.examples import Example, dense_feature_names
from streaming.contract.names import Keys
from streaming.errors import InvalidEvent
from streaming.features.candidates import SourceSizes
from streaming.features.labels import (
    Exposure,
    JoinState,
    LabelConfig,
    close_due,
    earliest_deadline,
    observe,
    on_followup,
    on_view,
)
from streaming.features.state import (
    DEFAULT_FEATURES,
    EVENT_WEIGHT,
    SEP,
    EntityState,
    FeatureConfig,
    UserItem,
    feature_rows,
    parse_recent,
    touch_user_item,
)
from streaming.ingest.dlq import dead_letter
from streaming.ingest.types import BatchReads, Op, OutMessage, Plan, RawMessage

__all__ = [
    "COUNTERS",
    "ProcessorConfig",
    "Snapshots",
    "bookkeeping_ops",
    "dlq_record",
    "feature_ops",
    "join_ops",
    "label_event",
    "plan_batch",
]

COUNTERS = ("processed", "accepted", "invalid", "duplicate", "out_of_order", "late",
            "unmatched_followups", "examples", "examples_positive", "examples_sampled",
            "dlq_truncated")

@dataclass(frozen=True, slots=True)
class ProcessorConfig:
    """What the batch processor needs of the settings (built by
    :func:`streaming.ingest.processor.processor_config`)."""

    examples_topic: str
    dlq_topic: str
    source_topic: str
    example_format: str = "msgpack"  # the examples' wire form (streaming.contract.examples)
    features: FeatureConfig = DEFAULT_FEATURES
    labels: LabelConfig = field(default_factory=LabelConfig)
    limits: Limits = DEFAULT_LIMITS
    dedup_window: int = 100_000
    # Implicit mode: negatives are drawn from the N items trending now. Drawn from all-time
    # popularity instead, they are older and staler than the positives, so the model learns
    # "new or hot = positive" and a drift (new hits) throws its feeds off.
    negative_pool: int = 2_000
    # Share of negatives from the user's own items; None: proportional to their number (every
    # own or pool item equally likely; see streaming.features.labels.sample_mixed_negatives).
    hard_negatives: float | None = None
    # Implicit mode: the scorer's list-backed candidate sources (co-visitation, categories, new,
    # popular) whose items join the trending pool as negatives; None: the trending pool only.
    negative_sources: SourceSizes | None = None
    # DLQ values beyond this are cut (the headers keep size and SHA-256): the record must fit
    # the broker's message.max.bytes, or it would block the partition's outbox.
    dlq_max_value_bytes: int = 65_536
    parked_kept: int = 1_000  # refused outbox records kept aside per partition (newest)
    item_changes_kept: int = 100_000  # items in the item change log (trimmed at 2N back to N)


# (user fields, recent count, item fields, category, price, event time, user x item entry,
# neighbour score)
SnapshotRow = tuple[dict[str, Any], int, dict[str, Any], str | None, float | None, int,
                    UserItem | None, float]


@dataclass(slots=True)
class Snapshots:
    """Model inputs taken during the walk (copies of the state before the event's own update)
    and computed for the whole batch at the end, in one vectorised :func:`feature_rows` call."""

    rows: list[SnapshotRow] = field(default_factory=list)
    exposures: list[tuple[Exposure, int]] = field(default_factory=list)
    examples: list[tuple[dict[str, Any], int]] = field(default_factory=list)  # Example fields
    # except ``features``, and the snapshot row that gives them

    def take(self, user: EntityState, recent_count: int, item: EntityState, category: str | None,
             price: float | None, ts: int, user_item: UserItem | None = None,
             neighbour_score: float = 0.0) -> int:
        """Snapshot (user, item) as of now; returns the row index."""
        self.rows.append((dict(user.fields), recent_count, dict(item.fields), category, price, ts,
                          user_item, neighbour_score))
        return len(self.rows) - 1

    def resolve(self, fc: FeatureConfig) -> list[Example]:
        """Fill the exposures' features; return the examples (implicit mode) with theirs."""
        if not self.rows:
            return []
        users, counts, items, cats, prices, times, user_items, nb = zip(*self.rows, strict=True)
        matrix = feature_rows(users, counts, items, cats, prices, times, fc,
                              user_items=user_items, neighbour_scores=nb)
        names = dense_feature_names(fc.half_lives_ms)
        rows = [dict(zip(names, r, strict=True)) for r in matrix.tolist()]
        for exposure, idx in self.exposures:
            exposure.features = orjson.dumps(rows[idx]).decode()
        return [Example(features=rows[idx], **fields) for fields, idx in self.examples]


def label_event(ev: Event, offset: int, user: EntityState, user_recent: list[tuple[str, int]],
                user_items: dict[str, UserItem], item: EntityState,
                items: dict[str, EntityState], category: str | None, negatives: Sequence[str],
                join: JoinState, lc: LabelConfig, snaps: Snapshots, now_ms: int,
                counts: Counter[str], neighbours: Mapping[str, float] | None = None) -> None:
    """The labelling step of one accepted event, before its feature update.

    Exposure mode: a view opens an exposure (its inputs snapshotted now), a click/purchase is
    a follow-up. Implicit mode: a click/purchase is a positive example and ``negatives`` (sampled
    items) are negatives, each with the item's last seen price. ``neighbours`` is the user's
    neighbour list (item -> score) as read for the batch."""
    nb = neighbours or {}
    recent_ids = [i for i, _ in user_recent]

    def snapshot(item_id: str, item_state: EntityState, cat: str | None,
                 price: float | None) -> int:
        return snaps.take(user, len(user_recent), item_state, cat, price, ev.ts,
                          user_items.get(item_id), nb.get(item_id, 0.0))

    if ev.event_type == "view" and lc.mode == "exposure":
        exposure = Exposure(ev.event_id, ev.user_id, ev.item_id, ev.ts, category, "{}",
                            recent_ids, offset)
        snaps.exposures.append((exposure, snapshot(ev.item_id, item, category, ev.price)))
        on_view(join, exposure, lc)
    elif ev.event_type != "view":
        if lc.mode == "exposure":
            on_followup(join, ev, lc, counts)
            return
        trace = {"event_ts": ev.ts, "closed_ms": now_ms, "offset": offset}
        common = {"user_id": ev.user_id, "ts": ev.ts, "recent": recent_ids, "trace": trace}
        snaps.examples.append(({**common, "example_id": ev.event_id, "item_id": ev.item_id,
                                "category": category, "click": 1,
                                "purchase": int(ev.event_type == "purchase"), "sampled": False},
                               snapshot(ev.item_id, item, category, ev.price)))
        for k, neg in enumerate(negatives):
            neg_state = items.get(neg, EntityState())
            neg_cat = neg_state.fields.get("cat")
            snaps.examples.append(({**common, "example_id": f"{ev.event_id}:n{k}",
                                    "item_id": neg, "category": neg_cat, "click": 0,
                                    "purchase": 0, "sampled": True},
                                   # The item's last seen price, as the scorer sees it: a
                                   # missing price would mark every negative (a label leak
                                   # the model learns).
                                   snapshot(neg, neg_state, neg_cat,
                                            neg_state.fields.get("price"))))


@lru_cache(maxsize=64)
def _half_life_args(half_lives_ms: tuple[tuple[str, int], ...]) -> tuple[Any, ...]:
    """A ``dadd`` op's tail: the number of counters, then (label, half-life ms) pairs."""
    return (len(half_lives_ms), *(x for pair in half_lives_ms for x in pair))


def feature_ops(ev: Event, user: EntityState, item: EntityState,
                user_recent: list[tuple[str, int]], user_items: dict[str, UserItem],
                category: str | None, keys: Keys, fc: FeatureConfig) -> list[Op]:
    """Apply one event to the in-memory user and item state (for later snapshots in the same
    batch) and return the ops that apply it in Redis: decayed counters, category affinity,
    item attributes, popularity and trending lists, purchases, co-visitation, recent items,
    and the user x item entry."""
    # Locals and each key built once: this runs per event, and was an eighth of the worker.
    ops: list[Op] = []
    uid, iid, ts, etype = ev.user_id, ev.item_id, ev.ts, ev.event_type
    uk, ik = keys.user(uid), keys.item(iid)
    weight = EVENT_WEIGHT[etype]
    dadd_tail = _half_life_args(fc.half_lives_ms)
    user.add_decayed(etype, ts, 1.0, fc.half_lives_ms)
    ops.append(["dadd", uk, etype, ts, 1.0, *dadd_tail])
    item.add_decayed(etype, ts, 1.0, fc.half_lives_ms)
    ops.append(["dadd", ik, etype, ts, 1.0, *dadd_tail])
    # Ops that could not change Redis are skipped: the state read for this batch bounds what
    # is there (``last`` only grows, ``first`` only shrinks), which keeps the scripts short.
    if ts > user.fields.get("last", -1.0):
        user.set_max("last", ts)
        ops.append(["hmax", uk, "last", ts])
    if category:
        prefix = f"c.{category}"
        affinity = (("a", fc.affinity_half_life_ms), ("s", fc.short_affinity_half_life_ms))
        user.add_decayed(prefix, ts, weight, affinity)
        ops.append(["dadd", uk, prefix, ts, weight, *_half_life_args(affinity)])
    if ev.category and item.fields.get("cat") != ev.category:
        item.fields["cat"] = ev.category
        ops.append(["hset", ik, "cat", ev.category])
    if ev.price is not None and item.fields.get("price") != ev.price:
        # The item's last seen price, for serving-time features.
        item.fields["price"] = ev.price
        ops.append(["hset", ik, "price", repr(ev.price)])
    count_field = f"n.{etype}"
    item.incr(count_field)
    ops.append(["hincr", ik, count_field, 1])
    first = item.fields.get("first")
    if first is None or ts < first:
        item.set_min("first", ts)
        ops.append(["hmin", ik, "first", ts])
        ops.append(["zadd_min", keys.new_items, iid, ts, fc.new_items_kept])
    ops.append(["zincr", keys.popular, iid, 1, 0])
    ops.append(["zdecay", keys.trending, iid, ts, weight, fc.trending_half_life_ms,
                fc.trending_top_k, keys.trending_t0])
    if category:
        ops.append(["zincr", keys.category_items(category), iid, 1, fc.category_top_k])
    if etype == "purchase":
        ops.append(["zadd", keys.purchased(uid), iid, ts])
        ops.append(["ztrim", keys.purchased(uid), fc.purchased_kept])
    own_covisit, top_k, window_ms = None, fc.covisit_top_k, fc.covisit_window_ms
    for other, other_ts in user_recent[:fc.covisit_recent]:
        if other != iid and abs(ts - other_ts) <= window_ms:
            own_covisit = own_covisit or keys.covisit(iid)
            ops.append(["zincr", keys.covisit(other), iid, 1, top_k])
            ops.append(["zincr", own_covisit, other, 1, top_k])
    user_items[iid] = touch_user_item(user_items.get(iid), etype, ts, weight,
                                      fc.user_item_half_life_ms)
    ops.append(["uitouch", keys.user_items(uid), keys.user_items_order(uid), iid,
                EVENT_TYPES.index(etype) + 1, ts, weight, fc.user_item_half_life_ms,
                fc.user_items_kept])
    user_recent.insert(0, (iid, ts))
    del user_recent[fc.recent_items:]
    ops.append(["lpush_trim", keys.recent(uid), f"{iid}{SEP}{ts}", fc.recent_items])
    return ops


def join_ops(join: JoinState, keys: Keys, partition: int, lc: LabelConfig,
             expired_followups: Sequence[str] = ()) -> list[Op]:
    """Persist what the batch changed of the partition's joiner state: pending exposures with
    their earliest deadline, recent follow-ups with their newest time, and follow-up pairs
    whose every entry fell below the watermark."""
    ops: list[Op] = []
    lx, lxd = keys.partition("lx", partition), keys.partition("lxd", partition)
    lf, lfd = keys.partition("lf", partition), keys.partition("lfd", partition)
    for key in sorted(join.changed_pairs):
        exposures = join.pending.get(key, [])
        if exposures:
            ops.append(["hset", lx, key, _json([e.to_dict() for e in exposures])])
            ops.append(["zadd", lxd, key, earliest_deadline(exposures, lc)])
        else:
            ops.append(["hdel", lx, key])
            ops.append(["zrem", lxd, key])
    for key in sorted(join.changed_followups):
        followups = join.followups.get(key, [])
        if followups:
            ops.append(["hset", lf, key, _json(followups)])
            ops.append(["zadd", lfd, key, max(ts for _, ts in followups)])
        else:
            ops.append(["hdel", lf, key])
            ops.append(["zrem", lfd, key])
    for key in expired_followups:
        # Every follow-up of the pair is below the watermark: no future view can match it.
        if key not in join.changed_followups and key not in join.followups:
            ops.append(["hdel", lf, key])
            ops.append(["zrem", lfd, key])
    return ops


def bookkeeping_ops(keys: Keys, topic: str, partition: int, max_ts: int | None,
                    dedup_window: int, counts: Counter[str]) -> list[Op]:
    """The partition's max event time, the dedup window trim and the counters."""
    ops: list[Op] = []
    if max_ts is not None:
        ops.append(["set", keys.max_event_time(topic, partition), str(max_ts)])
    ops.append(["ztrim", keys.partition("seen", partition), dedup_window])
    for name, n in counts.items():
        if n:
            ops.append(["hincr", keys.stats(partition), name, n])
    return ops


def dlq_record(cfg: ProcessorConfig, partition: int, msg: RawMessage, code: str,
               detail: str) -> tuple[OutMessage, bool]:
    """The DLQ record of a rejected message (:func:`streaming.ingest.dlq.dead_letter`: original
    key and bytes up to ``cfg.dlq_max_value_bytes``, the reason, size and hash in headers) and
    whether it was truncated."""
    return dead_letter(cfg.dlq_topic, f"{cfg.source_topic}/{partition}", msg, code, detail,
                       cfg.dlq_max_value_bytes)


def plan_batch(
    keys: Keys,
    partition: int,
    fresh: Sequence[tuple[RawMessage, Event | InvalidEvent]],
    reads: BatchReads,
    negatives: dict[str, list[str]],
    cfg: ProcessorConfig,
    now_ms: int,
) -> Plan:
    """The ops and outbox records for one batch, given the state it read. Pure."""
    fc, lc = cfg.features, cfg.labels
    counts: Counter[str] = Counter({c: 0 for c in COUNTERS})
    ops: list[Op] = []
    outbox: list[OutMessage] = []
    users = {u: EntityState(h) for u, h in reads.users.items()}
    items = {i: EntityState(h) for i, h in reads.items.items()}
    recent = {u: parse_recent(r) for u, r in reads.recent.items()}
    user_items = {u: dict(m) for u, m in reads.user_items.items()}
    join = JoinState(max_ts=reads.max_ts, pending=reads.pending, followups=reads.followups)
    seen = set(reads.seen)
    snaps = Snapshots()
    seen_key = keys.partition("seen", partition)
    changed: dict[str, None] = {}  # items whose hash the batch changes, first touch first

    for msg, ev in fresh:
        counts["processed"] += 1
        if isinstance(ev, InvalidEvent):
            counts["invalid"] += 1
            record, truncated = dlq_record(cfg, partition, msg, ev.code, ev.detail)
            outbox.append(record)
            counts["dlq_truncated"] += truncated
            continue
        if ev.event_id in seen:
            counts["duplicate"] += 1
            continue
        seen.add(ev.event_id)
        counts["accepted"] += 1
        ops.append(["zadd", seen_key, ev.event_id, msg.offset])
        observe(join, ev, lc, counts)
        user = users.setdefault(ev.user_id, EntityState())
        item = items.setdefault(ev.item_id, EntityState())
        user_recent = recent.setdefault(ev.user_id, [])
        own = user_items.setdefault(ev.user_id, {})
        category = ev.category or item.fields.get("cat")
        label_event(ev, msg.offset, user, user_recent, own, item, items, category,
                    negatives.get(ev.event_id, ()), join, lc, snaps, now_ms, counts,
                    reads.neighbours.get(ev.user_id))
        ops.extend(feature_ops(ev, user, item, user_recent, own, category, keys, fc))
        changed[ev.item_id] = None

    examples = snaps.resolve(fc)
    if lc.mode == "exposure":
        examples.extend(close_due(join, lc, now_ms))
    ops.extend(join_ops(join, keys, partition, lc, reads.expired_followups))
    for ex in examples:
        outbox.append(OutMessage(cfg.examples_topic, ex.user_id.encode(),
                                  ex.encode(cfg.example_format)))
    counts["examples"] = len(examples)
    counts["examples_positive"] = sum(ex.click for ex in examples)
    counts["examples_sampled"] = sum(ex.sampled for ex in examples)
    ops.extend(bookkeeping_ops(keys, cfg.source_topic, partition, join.max_ts, cfg.dedup_window,
                               counts))
    if changed:
        # Scorers cache item state until it changes: they follow this log (see
        # streaming.serving.ranker.FeedRanker.sync_items).
        ops.append(["changed", keys.item_changes, keys.item_changes_meta, cfg.item_changes_kept,
                    len(changed), *changed])
    return Plan(ops, outbox, counts, len(examples))


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()
