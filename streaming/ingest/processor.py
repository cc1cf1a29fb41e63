"""Per-partition batch processing: validate, de-duplicate, update features, join labels.

One call of :meth:`BatchProcessor.process` handles consecutive messages of one partition:

1. validate each message (invalid -> a DLQ record with the reason and the original bytes);
2. read the batch's state from Redis in one round trip (``lua/read.lua``); drop offsets already
   applied (redelivery);
3. drop duplicate ``event_id`` s (per-partition window of the last ``dedup_window`` ids);
4. walk the events in offset order: snapshot model inputs where an example needs them (before
   the event's own update), update feature state, apply the labelling rules;
5. apply everything atomically with the offset watermark (:mod:`streaming.ingest.state_store`);
6. produce the outbox (examples, DLQ records) and trim it once the broker acknowledged.

Planning (steps 3-4) is pure (:mod:`streaming.ingest.plan`); I/O goes through
:class:`~streaming.ingest.state_store.StateStore` and an :class:`~streaming.ingest.types.OutboxSink`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from streaming.contract.events import Event, Limits, parse_event
from streaming.errors import InvalidEvent, StoreError
from streaming.features.candidates import source_seeds, source_sizes
from streaming.features.labels import LabelConfig, pair_key, sample_mixed_negatives
from streaming.features.state import SEP, feature_config
from streaming.ingest.dlq import is_metadata_only, metadata_only
from streaming.ingest.plan import ProcessorConfig, plan_batch
from streaming.ingest.state_store import StateStore
from streaming.ingest.types import BatchReads, OutboxSink, OutMessage, RawMessage, Undeliverable
from streaming.io.producer import RecordProducer
from streaming.io.redis_client import client_kwargs
from streaming.settings import Settings

__all__ = ["BatchProcessor", "BatchResult", "ProcessorConfig", "ProducerSink", "RawMessage",
           "build_processor", "dlq_reason", "processor_config"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class BatchResult:
    """Outcome of one :meth:`BatchProcessor.process` call."""

    counts: Counter[str]
    examples: int
    applied: bool  # False: the whole batch was a redelivery


class BatchProcessor:
    """Processes batches of one partition at a time (see the module docstring); built by
    :func:`build_processor`. ``clock`` returns wall time in seconds."""

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
        """Process consecutive ``messages`` of ``partition``; their effects apply exactly once.

        Re-reads and retries (3 attempts) when the watermark moved meanwhile (another worker
        took the partition). Raises :class:`StoreError` when Redis fails or the watermark keeps
        moving, and the sink's errors (:class:`~streaming.errors.DeliveryError`)."""
        messages = _once_in_offset_order(partition, messages)
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
        # Exposure labelling needs a user's x item entry only for the items of the user's own
        # events; implicit labelling samples negatives among all of the user's items.
        user_items_of: dict[str, set[str]] | None = None
        if not implicit:
            user_items_of = {}
            for e in events:
                user_items_of.setdefault(e.user_id, set()).add(e.item_id)
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
            user_items_of=user_items_of,
        )
        fresh = [(m, e) for m, e in parsed if m.offset > reads.applied_offset]
        if not fresh:
            return BatchResult(Counter(), 0, applied=False)
        # If part of the batch was already applied, its event times are in the stored max too,
        # so the watermark the read computed from the whole batch is still the right one.
        negatives: dict[str, list[str]] = {}
        if implicit:
            positives = [e for _, e in fresh if isinstance(e, Event) and e.event_type != "view"]
            recent = {u: [entry.rpartition(SEP)[0] for entry in reads.recent.get(u, [])]
                      for u in {e.user_id for e in positives}}
            # Sorted: the draw must not depend on the order Redis returned them in.
            own = {u: sorted({*reads.user_items.get(u, {}), *items}) for u, items in recent.items()}
            pools = await self._negative_pools(reads, recent, max((e.ts for e in positives),
                                                                  default=0))
            for e in positives:
                negatives[e.event_id] = sample_mixed_negatives(
                    e.event_id, e.item_id, own[e.user_id], pools.get(e.user_id, reads.trending),
                    cfg.labels.negatives, cfg.hard_negatives,
                    weighted=cfg.labels.negative_sampling == "popularity")
            wanted = {i for items in negatives.values() for i in items} - set(reads.items)
            if wanted:
                reads.items.update(await self.store.read_items(sorted(wanted)))

        plan = plan_batch(self.store.keys, partition, fresh, reads, negatives, cfg, now_ms)
        outbox_len = await self.store.apply(
            partition, reads.applied_offset, fresh[-1][0].offset, plan.ops, plan.outbox)
        if outbox_len is None:
            return None
        counts = Counter(plan.counts)
        if outbox_len == len(plan.outbox):
            if plan.outbox:
                counts.update(await self._deliver(partition, plan.outbox))
        else:
            # Records left by a run that died between its commit and its produce come first.
            counts.update(await self._flush_outbox(partition))
        return BatchResult(counts, plan.examples, applied=True)

    async def _negative_pools(self, reads: BatchReads, recent: Mapping[str, Sequence[str]],
                              at_ms: int) -> dict[str, list[tuple[str, float]]]:
        """Per user of ``recent`` (user -> recent items, newest first; the users with a positive
        in the batch): the trending pool plus the items of the user's neighbour list (the
        scorer's ``neighbours`` source) and, with ``negative_sources``, of the scorer's
        list-backed candidate sources for that user (top categories as of ``at_ms``), each item
        once, as of the batch's start. A user without either gets the trending pool alone.

        The neighbour list's items are negatives too because the scorer ranks them: a model
        that saw them only as positives (bought) or own items would learn that a high
        ``nb_score`` means a sure positive (on UCI, without them: Recall@20 0.276, with 0.278). They
        join a uniform draw only; a popularity-weighted one keeps to the trending pool."""
        sizes = self.cfg.negative_sources
        lists: dict[str, list[str]] = {}
        per_user: dict[str, list[str]] = {user: [] for user in recent}
        if sizes is not None and recent:
            keys, fc = self.store.keys, self.cfg.features
            wanted = {keys.new_items: sizes.new_candidates, keys.popular: sizes.popular_candidates}
            for user in sorted(recent):
                seeds, cats = source_seeds(reads.users.get(user, {}), recent[user], at_ms,
                                           fc.affinity_half_life_ms, sizes)
                wanted.update({keys.covisit(i): sizes.covisit_per_item for i in seeds})
                wanted.update({keys.category_items(c): sizes.category_candidates for c in cats})
                per_user[user] = [*map(keys.covisit, seeds), *map(keys.category_items, cats),
                                  keys.new_items, keys.popular]
            lists = await self.store.read_lists(wanted)
        uniform = self.cfg.labels.negative_sampling == "uniform"
        trending = {i for i, _ in reads.trending}
        pools = {}
        for user, user_keys in per_user.items():
            neighbours = sorted(reads.neighbours.get(user, {})) if uniform else []
            extra = dict.fromkeys(i for i in itertools.chain(
                neighbours, (i for k in user_keys for i in lists[k])) if i not in trending)
            if extra:
                pools[user] = [*reads.trending, *((i, 1.0) for i in extra)]
        return pools

    async def flush_outbox(self, partition: int) -> Counter[str]:
        """Produce whatever a previous run committed but did not produce (after a crash).
        Returns the delivery counters (``outbox_flushed``, ``dlq_metadata_only``, ``parked``)."""
        async with self._lock(partition):
            return await self._flush_outbox(partition)

    async def _flush_outbox(self, partition: int) -> Counter[str]:
        pending = await self.store.outbox(partition)
        if not pending:
            return Counter()
        log.info("partition %d: producing %d outbox records", partition, len(pending))
        counts = await self._deliver(partition, pending)
        counts["outbox_flushed"] += len(pending)
        return counts

    async def _deliver(self, partition: int, records: Sequence[OutMessage]) -> Counter[str]:
        """Produce ``records`` (the head of the partition's outbox) and trim them from it.

        A DLQ record the broker refuses for good is replaced by its metadata-only form; a record
        refused even then (or an example) is parked with the broker's error: never retried, so
        one record can never block the partition. Transient failures raise
        :class:`~streaming.errors.DeliveryError` and leave the outbox as it was (retried)."""
        counts: Counter[str] = Counter()
        parked: list[tuple[OutMessage, str]] = []
        retry: list[tuple[OutMessage, str]] = []
        for f in await self.sink.send_all(records) or ():
            record = records[f.index]
            if record.topic == self.cfg.dlq_topic and not is_metadata_only(record):
                retry.append((record, f.error))
            else:
                parked.append((record, f.error))
        if retry:
            replacements = [metadata_only(record, error) for record, error in retry]
            refused = await self.sink.send_all(replacements) or ()
            parked.extend(retry[f.index] for f in refused)
            counts["dlq_metadata_only"] += len(replacements) - len(refused)
            log.warning("partition %d: %d DLQ record(s) refused by the broker (%s); sent "
                        "without key and value instead", partition, len(retry), retry[0][1])
        if parked:
            log.error("partition %d: %d record(s) refused by the broker for good (%s); moved "
                      "aside to %s", partition, len(parked), parked[0][1],
                      self.store.keys.parked(partition))
            counts["parked"] += len(parked)
        await self.store.park_and_trim(partition, parked, len(records), self.cfg.parked_kept)
        return counts


def _once_in_offset_order(partition: int, messages: Sequence[RawMessage]) -> Sequence[RawMessage]:
    """``messages`` by offset, each offset once. After a broker restart a consumer can hand the
    same message over twice in one batch; the watermark (the batch's last offset) only skips
    what earlier batches applied, so a repeat inside a batch would be counted again."""
    offsets = [m.offset for m in messages]
    if all(a < b for a, b in itertools.pairwise(offsets)):
        return messages
    unique = sorted({m.offset: m for m in reversed(messages)}.values(), key=lambda m: m.offset)
    log.warning("partition %d: %d message(s) handed over twice or out of order in one batch "
                "(offsets %d..%d); each is processed once", partition,
                len(messages) - len(unique), min(offsets), max(offsets))
    return unique


def processor_config(settings: Settings) -> ProcessorConfig:
    """The processor's configuration from the settings (topics, features, labels, dedup)."""
    s = settings.stream
    return ProcessorConfig(
        examples_topic=settings.topics.examples,
        dlq_topic=settings.topics.dlq,
        source_topic=settings.topics.events,
        example_format=s.example_format,
        features=feature_config(settings),
        labels=LabelConfig(mode=s.label_mode, window_ms=s.attribution_window_ms,
                           allowed_lateness_ms=s.allowed_lateness_ms, negatives=s.negatives,
                           negative_sampling=s.negative_sampling),
        limits=Limits(min_ts_ms=s.min_event_ts_ms),
        dedup_window=s.dedup_window,
        negative_pool=s.negative_pool,
        hard_negatives=None if s.hard_negatives == "proportional" else float(s.hard_negatives),
        negative_sources=(source_sizes(settings.serving) if s.negative_sources == "candidates"
                          else None),
        dlq_max_value_bytes=s.dlq_max_value_bytes,
        parked_kept=s.parked_kept,
        item_changes_kept=s.item_changes_kept,
    )


def build_processor(settings: Settings, sink: OutboxSink | None = None
                    ) -> tuple[BatchProcessor, Callable[[], Awaitable[None]]]:
    """The one way to build a processor: its own async Redis client and, unless ``sink`` is
    given (the in-process evaluation collects records instead), a producer for the outbox.
    Returns ``(processor, close)``; ``await close()`` flushes the producer and closes Redis."""
    client = aioredis.Redis.from_url(settings.redis.url, **client_kwargs(settings.redis))
    producer = None
    if sink is None:
        producer = RecordProducer(settings, linger_ms=2)
        sink = ProducerSink(producer)
    store = StateStore(client, settings.redis.key_prefix, settings.topics.events)
    processor = BatchProcessor(store, sink, processor_config(settings))

    async def close() -> None:
        if producer is not None:
            producer.flush(30)
        await client.aclose()

    return processor, close


class ProducerSink:
    """:class:`OutboxSink` on a :class:`~streaming.io.producer.RecordProducer`; waits for acks off
    the event loop."""

    def __init__(self, producer: Any) -> None:
        self._producer = producer

    async def send_all(self, messages: Sequence[OutMessage]) -> list[Undeliverable]:
        """Produce ``messages`` and wait (off the loop, up to 60 s) until each is acknowledged
        or refused; returns the refused ones. Raises :class:`~streaming.errors.DeliveryError`
        for any other failure."""
        records = [(m.topic, m.key, m.value, m.headers) for m in messages]
        refused = await asyncio.get_running_loop().run_in_executor(
            None, self._producer.deliver, records, 60.0)
        return [Undeliverable(i, error) for i, error in sorted(refused.items())]


def dlq_reason(headers: Sequence[tuple[str, bytes]] | None) -> dict[str, str]:
    """DLQ headers -> ``{"streamrec.reason": ..., ...}`` for readers of the DLQ."""
    return {k: v.decode(errors="replace") for k, v in (headers or ()) if k.startswith("streamrec.")}

