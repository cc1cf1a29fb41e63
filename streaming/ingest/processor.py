"""Per-partition batch processing: validate, de-duplicate, update features, join labels.

One call of :meth:`BatchProcessor.process` handles consecutive messages of one partition:

1. validate each message (invalid -> a DLQ record with the reason and the original bytes);
2. read the batch's state from Redis in one pipeline; drop offsets already applied (redelivery);
3. drop duplicate ``event_id`` s (per-partition window of the last ``dedup_window`` ids);
4. walk the events in offset order: snapshot model inputs where an example needs them (before
   the event's own update), update feature state, apply the labelling rules;
5. apply everything atomically with the offset watermark (:mod:`streaming.ingest.state_store`);
6. produce the outbox (examples, DLQ records) and trim it once the broker acknowledged.

Planning (steps 3-4) is pure; I/O goes through :class:`StateStore` and an :class:`OutboxSink`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from streaming.contract.events import DEFAULT_LIMITS, Event, Limits, parse_event
from streaming.errors import InvalidEvent, StoreError
from streaming.features.labels import (
    Example,
    Exposure,
    JoinState,
    LabelConfig,
    close_due,
    earliest_deadline,
    observe,
    on_followup,
    on_view,
    pair_key,
    sample_negatives,
)
from streaming.features.state import (
    DEFAULT_FEATURES,
    SEP,
    EntityState,
    FeatureConfig,
    dense_feature_names,
    feature_rows,
    parse_recent,
)
from streaming.ingest.state_store import BatchReads, OutMessage, StateStore

log = logging.getLogger(__name__)

COUNTERS = ("processed", "accepted", "invalid", "duplicate", "out_of_order", "late",
            "unmatched_followups", "examples", "examples_positive", "examples_sampled")
EVENT_WEIGHT = {"view": 1.0, "click": 3.0, "purchase": 10.0}  # category affinity, trending


@dataclass(frozen=True, slots=True)
class RawMessage:
    offset: int
    key: bytes | None
    value: bytes
    timestamp_ms: int | None = None


class OutboxSink(Protocol):
    """Produces outbox records and returns once all are acknowledged (or raises)."""

    async def send_all(self, messages: Sequence[OutMessage]) -> None: ...


@dataclass(frozen=True, slots=True)
class ProcessorConfig:
    examples_topic: str
    dlq_topic: str
    source_topic: str
    features: FeatureConfig = DEFAULT_FEATURES
    labels: LabelConfig = field(default_factory=LabelConfig)
    limits: Limits = DEFAULT_LIMITS
    dedup_window: int = 100_000
    # Implicit mode: negatives are drawn from the N items trending now. Drawn from all-time
    # popularity instead, they are older and staler than the positives, so the model learns
    # "new or hot = positive" and a drift (new hits) throws its feeds off.
    negative_pool: int = 2_000


@dataclass(slots=True)
class BatchResult:
    counts: Counter[str]
    examples: int
    applied: bool  # False: the whole batch was a redelivery


class BatchProcessor:
    def __init__(self, store: StateStore, sink: OutboxSink, cfg: ProcessorConfig,
                 clock: Any = time.time) -> None:
        self.store = store
        self.sink = sink
        self.cfg = cfg
        self._clock = clock
        # One batch or outbox flush at a time per partition (the agent and the flush timer).
        self._locks: dict[int, asyncio.Lock] = {}

    def _lock(self, partition: int) -> asyncio.Lock:
        return self._locks.setdefault(partition, asyncio.Lock())

    async def process(self, partition: int, messages: Sequence[RawMessage]) -> BatchResult:
        async with self._lock(partition):
            for _attempt in range(3):
                result = await self._process_once(partition, messages)
                if result is not None:
                    return result
            log.warning("partition %d: watermark moved under us (rebalance?); re-reading", partition)
        raise StoreError(f"partition {partition}: could not apply batch (watermark keeps moving)")

    async def _process_once(
        self, partition: int, messages: Sequence[RawMessage]
    ) -> BatchResult | None:
        cfg = self.cfg
        now_ms = int(self._clock() * 1000)
        parsed: list[tuple[RawMessage, Event | InvalidEvent]] = []
        for m in messages:
            try:
                parsed.append((m, parse_event(m.value, key=m.key, limits=cfg.limits, now_ms=now_ms)))
            except InvalidEvent as exc:
                parsed.append((m, exc))
        events = [e for _, e in parsed if isinstance(e, Event)]
        implicit = cfg.labels.mode == "implicit"
        reads = await self.store.read_batch(
            partition,
            event_ids=[e.event_id for e in events],
            users={e.user_id for e in events},
            items={e.item_id for e in events},
            pairs={pair_key(e.user_id, e.item_id) for e in events},
            recent_n=cfg.features.recent_items,
            trending_n=cfg.negative_pool if implicit else 0,
            batch_max_ts=max((e.ts for e in events), default=None),
            lateness_ms=None if implicit else cfg.labels.allowed_lateness_ms,
        )
        fresh = [(m, e) for m, e in parsed if m.offset > reads.applied_offset]
        if not fresh:
            return BatchResult(Counter(), 0, applied=False)
        # If part of the batch was already applied, its event times are in the stored max too,
        # so the watermark the read computed from the whole batch is still the right one.
        negatives: dict[str, list[str]] = {}
        if implicit:
            for _, e in fresh:
                if isinstance(e, Event) and e.event_type != "view":
                    negatives[e.event_id] = sample_negatives(
                        e.event_id, e.item_id, reads.trending, cfg.labels.negatives,
                        weighted=cfg.labels.negative_sampling == "popularity")
            wanted = {i for items in negatives.values() for i in items} - set(reads.items)
            if wanted:
                reads.items.update(await self.store.read_items(sorted(wanted)))

        plan = plan_batch(self.store, partition, fresh, reads, negatives, cfg, now_ms,
                          reads.expired_followups)
        outbox_len = await self.store.apply(
            partition, reads.applied_offset, fresh[-1][0].offset, plan.ops, plan.outbox)
        if outbox_len is None:
            return None
        if outbox_len == len(plan.outbox):
            if plan.outbox:
                await self.sink.send_all(plan.outbox)
                await self.store.trim_outbox(partition, len(plan.outbox))
        else:
            # Records left by a run that died between its commit and its produce come first.
            await self._flush_outbox(partition)
        return BatchResult(plan.counts, plan.examples, applied=True)

    async def flush_outbox(self, partition: int) -> int:
        """Produce whatever a previous run committed but did not produce (after a crash)."""
        async with self._lock(partition):
            return await self._flush_outbox(partition)

    async def _flush_outbox(self, partition: int) -> int:
        pending = await self.store.outbox(partition)
        if pending:
            log.info("partition %d: producing %d outbox records", partition, len(pending))
            await self.sink.send_all(pending)
            await self.store.trim_outbox(partition, len(pending))
        return len(pending)


@dataclass(slots=True)
class Plan:
    ops: list[list[Any]]
    outbox: list[OutMessage]
    counts: Counter[str]
    examples: int


def plan_batch(
    store: StateStore,
    partition: int,
    fresh: Sequence[tuple[RawMessage, Event | InvalidEvent]],
    reads: BatchReads,
    negatives: dict[str, list[str]],
    cfg: ProcessorConfig,
    now_ms: int,
    expired_followups: Sequence[str] = (),
) -> Plan:
    """Pure: the ops and outbox records for one batch, given the state it read."""
    fc, lc = cfg.features, cfg.labels
    counts: Counter[str] = Counter({c: 0 for c in COUNTERS})
    ops: list[list[Any]] = []
    outbox: list[OutMessage] = []
    users = {u: EntityState(h) for u, h in reads.users.items()}
    items = {i: EntityState(h) for i, h in reads.items.items()}
    recent = {u: parse_recent(r) for u, r in reads.recent.items()}
    join = JoinState(max_ts=reads.max_ts, pending=reads.pending, followups=reads.followups)
    seen = set(reads.seen)
    hl_args = [x for label, h in fc.half_lives_ms for x in (label, h)]
    examples: list[Example] = []
    # Model inputs are snapshotted during the walk (copies of the state before the event's own
    # update) and computed for the whole batch at the end, in one vectorised call.
    snap_rows: list[tuple[dict[str, Any], int, dict[str, Any], str | None, float | None, int]] = []
    snap_exposures: list[tuple[Exposure, int]] = []
    snap_examples: list[tuple[dict[str, Any], int]] = []  # Example fields except features

    for msg, ev in fresh:
        counts["processed"] += 1
        if isinstance(ev, InvalidEvent):
            counts["invalid"] += 1
            outbox.append(_dlq_record(cfg, partition, msg, ev.code, ev.detail))
            continue
        if ev.event_id in seen:
            counts["duplicate"] += 1
            continue
        seen.add(ev.event_id)
        counts["accepted"] += 1
        ops.append(["zadd", store.k_part("seen", partition), ev.event_id, msg.offset])
        observe(join, ev, lc, counts)

        user = users.setdefault(ev.user_id, EntityState())
        item = items.setdefault(ev.item_id, EntityState())
        user_recent = recent.setdefault(ev.user_id, [])
        category = ev.category or item.fields.get("cat")

        def snapshot(item_state: EntityState, cat: str | None, price: float | None,
                     ev: Event = ev, user: EntityState = user,
                     user_recent: list[tuple[str, int]] = user_recent) -> int:
            snap_rows.append((dict(user.fields), len(user_recent), dict(item_state.fields), cat,
                              price, ev.ts))
            return len(snap_rows) - 1

        recent_ids = [i for i, _ in user_recent]
        if ev.event_type == "view" and lc.mode == "exposure":
            exposure = Exposure(ev.event_id, ev.user_id, ev.item_id, ev.ts, category, {},
                                recent_ids, msg.offset)
            snap_exposures.append((exposure, snapshot(item, category, ev.price)))
            on_view(join, exposure, lc)
        elif ev.event_type != "view":
            if lc.mode == "exposure":
                on_followup(join, ev, lc, counts)
            else:
                trace = {"event_ts": ev.ts, "closed_ms": now_ms, "offset": msg.offset}
                common = {"user_id": ev.user_id, "ts": ev.ts, "recent": recent_ids,
                          "trace": trace}
                snap_examples.append(({**common, "example_id": ev.event_id,
                                       "item_id": ev.item_id, "category": category, "click": 1,
                                       "purchase": int(ev.event_type == "purchase"),
                                       "sampled": False},
                                      snapshot(item, category, ev.price)))
                for k, neg in enumerate(negatives.get(ev.event_id, ())):
                    neg_state = items.get(neg, EntityState())
                    neg_cat = neg_state.fields.get("cat")
                    snap_examples.append(({**common, "example_id": f"{ev.event_id}:n{k}",
                                           "item_id": neg, "category": neg_cat, "click": 0,
                                           "purchase": 0, "sampled": True},
                                          # The item's last seen price, as the scorer
                                          # sees it: a missing price would mark every
                                          # negative (a label leak the model learns).
                                          snapshot(neg_state, neg_cat,
                                                   neg_state.fields.get("price"))))

        # Feature updates: in memory (for later snapshots in this batch) and as ops.
        weight = EVENT_WEIGHT[ev.event_type]
        for key, state in ((store.k_user(ev.user_id), user), (store.k_item(ev.item_id), item)):
            state.add_decayed(ev.event_type, ev.ts, 1.0, fc.half_lives_ms)
            ops.append(["dadd", key, ev.event_type, ev.ts, 1.0, *hl_args])
        # Ops that could not change Redis are skipped: the state read for this batch bounds what
        # is there (``last`` only grows, ``first`` only shrinks), which keeps the scripts short.
        if ev.ts > user.fields.get("last", -1.0):
            user.set_max("last", ev.ts)
            ops.append(["hmax", store.k_user(ev.user_id), "last", ev.ts])
        if category:
            user.add_decayed(f"c.{category}", ev.ts, weight,
                             (("a", fc.affinity_half_life_ms),
                              ("s", fc.short_affinity_half_life_ms)))
            ops.append(["dadd", store.k_user(ev.user_id), f"c.{category}", ev.ts, weight,
                        "a", fc.affinity_half_life_ms, "s", fc.short_affinity_half_life_ms])
        if ev.category and item.fields.get("cat") != ev.category:
            item.fields["cat"] = ev.category
            ops.append(["hset", store.k_item(ev.item_id), "cat", ev.category])
        if ev.price is not None and item.fields.get("price") != ev.price:
            # The item's last seen price, for serving-time features.
            item.fields["price"] = ev.price
            ops.append(["hset", store.k_item(ev.item_id), "price", repr(ev.price)])
        item.incr(f"n.{ev.event_type}")
        ops.append(["hincr", store.k_item(ev.item_id), f"n.{ev.event_type}", 1])
        first = item.fields.get("first")
        if first is None or ev.ts < first:
            item.set_min("first", ev.ts)
            ops.append(["hmin", store.k_item(ev.item_id), "first", ev.ts])
            ops.append(["zadd_min", store.k_new_items(), ev.item_id, ev.ts, fc.new_items_kept])
        ops.append(["zincr", store.k_popular(), ev.item_id, 1, 0])
        ops.append(["zdecay", store.k_trending(), ev.item_id, ev.ts, weight,
                    fc.trending_half_life_ms, fc.trending_top_k])
        if category:
            ops.append(["zincr", store.k_category_items(category), ev.item_id, 1,
                        fc.category_top_k])
        if ev.event_type == "purchase":
            ops.append(["zadd", store.k_purchased(ev.user_id), ev.item_id, ev.ts])
            ops.append(["ztrim", store.k_purchased(ev.user_id), fc.purchased_kept])
        for other, other_ts in user_recent[:fc.covisit_recent]:
            if other != ev.item_id and abs(ev.ts - other_ts) <= fc.covisit_window_ms:
                ops.append(["zincr", store.k_covisit(other), ev.item_id, 1, fc.covisit_top_k])
                ops.append(["zincr", store.k_covisit(ev.item_id), other, 1, fc.covisit_top_k])
        user_recent.insert(0, (ev.item_id, ev.ts))
        del user_recent[fc.recent_items:]
        ops.append(["lpush_trim", store.k_recent(ev.user_id), f"{ev.item_id}{SEP}{ev.ts}",
                    fc.recent_items])

    if snap_rows:
        matrix = feature_rows(*zip(*snap_rows, strict=True), cfg=fc)  # type: ignore[misc]
        names = dense_feature_names(fc)
        rows = [dict(zip(names, r, strict=True)) for r in matrix.tolist()]
        for exposure, idx in snap_exposures:
            exposure.features = rows[idx]
        for fields, idx in snap_examples:
            examples.append(Example(features=rows[idx], **fields))
    if lc.mode == "exposure":
        examples.extend(close_due(join, lc, now_ms))
    for key in sorted(join.changed_pairs):
        exposures = join.pending.get(key, [])
        if exposures:
            ops.append(["hset", store.k_part("lx", partition), key,
                        orjson.dumps([e.to_dict() for e in exposures]).decode()])
            ops.append(["zadd", store.k_part("lxd", partition), key,
                        earliest_deadline(exposures, lc)])
        else:
            ops.append(["hdel", store.k_part("lx", partition), key])
            ops.append(["zrem", store.k_part("lxd", partition), key])
    for key in sorted(join.changed_followups):
        followups = join.followups.get(key, [])
        if followups:
            ops.append(["hset", store.k_part("lf", partition), key,
                        orjson.dumps(followups).decode()])
            ops.append(["zadd", store.k_part("lfd", partition), key, max(ts for _, ts in followups)])
        else:
            ops.append(["hdel", store.k_part("lf", partition), key])
            ops.append(["zrem", store.k_part("lfd", partition), key])
    for key in expired_followups:
        # Every follow-up of the pair is below the watermark: no future view can match it.
        if key not in join.changed_followups and key not in join.followups:
            ops.append(["hdel", store.k_part("lf", partition), key])
            ops.append(["zrem", store.k_part("lfd", partition), key])
    if join.max_ts is not None:
        ops.append(["set", store.k_part("mt", partition), str(join.max_ts)])
    ops.append(["ztrim", store.k_part("seen", partition), cfg.dedup_window])

    for ex in examples:
        outbox.append(OutMessage(cfg.examples_topic, ex.user_id.encode(), ex.to_json()))
    counts["examples"] = len(examples)
    counts["examples_positive"] = sum(ex.click for ex in examples)
    counts["examples_sampled"] = sum(ex.sampled for ex in examples)
    for name, n in counts.items():
        if n:
            ops.append(["hincr", store.k_part("stats", partition), name, n])
    return Plan(ops, outbox, counts, len(examples))


def _dlq_record(cfg: ProcessorConfig, partition: int, msg: RawMessage, code: str,
                detail: str) -> OutMessage:
    headers = (
        ("streamrec.reason", code.encode()),
        ("streamrec.detail", detail[:500].encode()),
        ("streamrec.source", f"{cfg.source_topic}/{partition}/{msg.offset}".encode()),
    )
    return OutMessage(cfg.dlq_topic, msg.key, msg.value, headers)


class ProducerSink:
    """:class:`OutboxSink` on a confluent-kafka producer; waits for acks off the event loop."""

    def __init__(self, producer: Any) -> None:
        self._producer = producer

    async def send_all(self, messages: Sequence[OutMessage]) -> None:
        for m in messages:
            self._producer.send_raw(m.key, m.value, topic=m.topic,
                                    headers=dict(m.headers) if m.headers else None)
        await asyncio.get_running_loop().run_in_executor(None, self._producer.flush, 60.0)


def dlq_reason(headers: Sequence[tuple[str, bytes]] | None) -> dict[str, str]:
    """DLQ headers -> ``{"streamrec.reason": ..., ...}`` for readers of the DLQ."""
    return {k: v.decode(errors="replace") for k, v in (headers or ()) if k.startswith("streamrec.")}

