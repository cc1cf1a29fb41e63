"""Redis adapter for the stream processor: batch reads, and one atomic apply per batch.

Exactly-once effects under at-least-once delivery: every batch of partition *p* is applied with
one Lua script that first compares the partition's applied-offset watermark ``P wm:<topic>:<p>``
with the offset the caller last saw, then runs the batch's ops (feature updates, joiner state,
counters, outbox records) and moves the watermark to the batch's last offset. A redelivered batch
(offsets at or below the watermark) is filtered out before it gets here; a caller with a stale
view (another worker took the partition over) gets ``None`` back from :meth:`StateStore.apply`
and must re-read.

Key names (the per-partition watermark, dedup window, joiner state, outbox and counters, and the
feature state) are :class:`streaming.contract.names.Keys`. The scripts are ``lua/read.lua``
(one round trip per batch) and ``lua/apply.lua``; the apply script's ops name keys that it does
not declare in KEYS, so it targets a single Redis (or a Redis Cluster with all streamrec keys
in one slot via a ``{tag}`` in the key prefix).
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from importlib import resources
from itertools import chain
from typing import Any

import msgpack
import orjson
import redis
import redis.asyncio as aioredis

from streaming.contract.names import Keys
from streaming.errors import StoreError
from streaming.features.labels import Exposure
from streaming.features.state import parse_state_hash, parse_state_hashes, parse_user_items
from streaming.ingest.types import BatchReads, OutMessage
from streaming.io.redis_client import as_text


def _lua(name: str) -> str:
    """A script shipped in ``streaming/ingest/lua/``."""
    return resources.files("streaming.ingest").joinpath("lua", name).read_text()


def read_stats(client: redis.Redis, key_prefix: str, partitions: Iterable[int]) -> dict[str, int]:
    """Processor counters summed over ``partitions`` (sync client; for CLIs and monitors)."""
    total: dict[str, int] = {}
    try:
        with client.pipeline(transaction=False) as pipe:
            for p in partitions:
                pipe.hgetall(Keys(key_prefix).stats(p))
            for counters in pipe.execute():
                for k, v in counters.items():
                    total[as_text(k)] = total.get(as_text(k), 0) + int(v)
    except redis.RedisError as exc:
        raise StoreError(f"Redis stats read failed: {exc}") from None
    return total


class StateStore:
    """All Redis I/O of the stream processor. ``client`` is a ``redis.asyncio.Redis``."""

    def __init__(self, client: aioredis.Redis, key_prefix: str, topic: str) -> None:
        self.r = client
        self.keys = Keys(key_prefix)
        self.topic = topic
        self._apply = client.register_script(_lua("apply.lua"))
        self._read = client.register_script(_lua("read.lua"))


    async def read_batch(
        self,
        partition: int,
        event_ids: Sequence[str],
        users: Iterable[str],
        items: Iterable[str],
        pairs: Iterable[str],
        recent_n: int,
        trending_n: int = 0,
        batch_max_ts: int | None = None,
        lateness_ms: int | None = None,
        user_items_of: Mapping[str, Collection[str]] | None = None,
    ) -> BatchReads:
        """Everything a batch needs, in one server-side script (one round trip; hundreds of
        keys per batch would otherwise cost more in client-side command handling than in Redis).

        With ``lateness_ms`` (exposure labelling), also the pending exposures whose window the
        batch's new watermark (``max(stored, batch_max_ts) - lateness_ms``) closes, and the
        follow-up pairs it expires.

        With ``user_items_of`` (user -> items), only those entries of each user's user x item
        state are read (HMGET); None: all of them (HGETALL). A user's ``ui:`` hash keeps up to 2 x
        ``stream.user_items_kept`` entries and fills over the first half hour of a soak. Parsed
        whole for every user of every batch, it became the largest part of a batch's small
        Python objects, and the worker's RSS grew with it (CPython gives an object arena back
        to the OS only when it is completely empty): at 250 events/s the entries read per event
        rose from 74 to 166 in 20 minutes and the worker's RSS by 14%; parsing only the batch's
        own entries, by 2.5%. Reading only them also keeps the script's reply small.
        """
        users, items, pairs = list(users), list(items), list(pairs)
        k = self.keys
        keys = [k.applied_offset(self.topic, partition), k.max_event_time(self.topic, partition),
                *(k.partition(name, partition) for name in ("seen", "lx", "lf", "lxd", "lfd")),
                k.trending]
        for u in users:
            keys += [k.user(u), k.recent(u), k.user_items(u), k.neighbours(u)]
        keys += [k.item(i) for i in items]
        args: list[Any] = [recent_n, trending_n, "" if batch_max_ts is None else batch_max_ts,
                           "" if lateness_ms is None else lateness_ms,
                           len(users), len(items), len(event_ids), len(pairs), *event_ids, *pairs]
        for u in users:
            if user_items_of is None:
                args.append("")
            else:
                wanted = sorted(user_items_of.get(u, ()))
                args += [len(wanted), *wanted]
        try:
            res = await self._read(keys=keys, args=args)
        except redis.RedisError as exc:
            raise StoreError(f"Redis batch read failed: {exc}") from None
        wm, mt, seen_scores, user_h, recent_l, item_h, lx, lf, trending, due, due_raw, exp, ui, nb = res
        out = BatchReads(
            applied_offset=int(wm) if wm else -1,
            max_ts=int(mt) if mt else None,
            seen={eid for eid, sc in zip(event_ids, seen_scores, strict=True) if sc is not None},
            users=dict(zip(users, parse_state_hashes(user_h), strict=True)),
            recent={u: list(map(bytes.decode, r)) for u, r in zip(users, recent_l, strict=True)},
            items=dict(zip(items, parse_state_hashes(item_h), strict=True)),
            user_items={u: parse_user_items(zip(h[::2], h[1::2], strict=True))
                        for u, h in zip(users, ui, strict=True)},
            neighbours={u: dict(zip(map(bytes.decode, h[::2]), map(float, h[1::2]), strict=True))
                        for u, h in zip(users, nb, strict=True) if h},
            pending={}, followups={},
            expired_followups=[as_text(p) for p in exp],
        )
        for pair, raw in zip(pairs, lx, strict=True):
            if raw:
                out.pending[pair] = [Exposure.from_dict(d) for d in orjson.loads(raw)]
        for pair, raw in zip(map(as_text, due), due_raw, strict=True):
            if raw and pair not in out.pending:
                out.pending[pair] = [Exposure.from_dict(d) for d in orjson.loads(raw)]
        for pair, raw in zip(pairs, lf, strict=True):
            if raw:
                out.followups[pair] = [(k, ts) for k, ts in orjson.loads(raw)]
        out.trending = [(as_text(trending[j]), float(trending[j + 1]))
                        for j in range(0, len(trending), 2)]
        return out

    async def read_items(self, items: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Feature hashes of ``items`` (parsed by :func:`parse_state_hash`) in one pipeline: for
        items the batch read did not cover (implicit mode's negatives). Raises :class:`StoreError`."""
        try:
            async with self.r.pipeline(transaction=False) as pipe:
                for i in items:
                    pipe.hgetall(self.keys.item(i))
                res = await pipe.execute()
        except redis.RedisError as exc:
            raise StoreError(f"Redis item read failed: {exc}") from None
        return {i: parse_state_hash(h.items()) for i, h in zip(items, res, strict=True)}

    async def read_lists(self, wanted: Mapping[str, int]) -> dict[str, list[str]]:
        """The first ``n`` members of each sorted set ``key -> n`` in ``wanted``, highest score
        first, in one pipeline (implicit mode's negatives from the candidate sources' lists).
        Raises :class:`StoreError`."""
        keys = list(wanted)
        try:
            async with self.r.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.zrevrange(key, 0, wanted[key] - 1)
                res = await pipe.execute()
        except redis.RedisError as exc:
            raise StoreError(f"Redis list read failed: {exc}") from None
        return {key: [as_text(m) for m in members] for key, members in zip(keys, res, strict=True)}

    async def apply(
        self,
        partition: int,
        expected_offset: int,
        new_offset: int,
        ops: list[list[Any]],
        outbox: Sequence[OutMessage],
    ) -> int | None:
        """Atomically apply ``ops`` and append ``outbox`` if the watermark is still
        ``expected_offset``. Returns the outbox length afterwards, or None (nothing applied)."""
        keys = [self.keys.applied_offset(self.topic, partition), self.keys.outbox(partition)]
        # One flat MessagePack array (the script walks it by each op's arity): the cheapest
        # form for Lua to decode, and ops are most of what a batch sends.
        flat = list(chain.from_iterable(ops))
        if None in flat:
            # cmsgpack turns nil into a hole in the Lua array, after which the script would
            # misread every op: refuse it here (a bug in the plan, never bad input).
            raise ValueError("an ingest op has a None argument")
        args: list[Any] = [str(expected_offset), str(new_offset), msgpack.packb(flat)]
        args.extend(m.encode() for m in outbox)
        try:
            ok, outbox_len = await self._apply(keys=keys, args=args)
        except redis.RedisError as exc:
            raise StoreError(f"Redis apply failed: {exc}") from None
        return int(outbox_len) if ok else None

    async def outbox(self, partition: int, limit: int = 10_000) -> list[OutMessage]:
        """Up to ``limit`` records of the partition's outbox, oldest first. Raises :class:`StoreError`."""
        try:
            raws = await self.r.lrange(self.keys.outbox(partition), 0, limit - 1)
        except redis.RedisError as exc:
            raise StoreError(f"Redis outbox read failed: {exc}") from None
        return [OutMessage.decode(r) for r in raws]

    async def park_and_trim(self, partition: int, parked: Sequence[tuple[OutMessage, str]],
                            n: int, keep: int) -> None:
        """In one transaction: move ``parked`` (record, the broker's error) to the partition's
        parked list (``P obp:<p>``, the newest ``keep`` kept), count them in its stats
        (``parked``), and drop the oldest ``n`` records of its outbox. Raises :class:`StoreError`.

        Parked entries are the record's framing (:meth:`OutMessage.encode`) after a JSON line
        ``{"error": ..., "ts_ms": ...}``."""
        now_ms = int(time.time() * 1000)
        try:
            async with self.r.pipeline(transaction=True) as pipe:
                for record, error in parked:
                    pipe.rpush(self.keys.parked(partition), orjson.dumps(
                        {"error": error, "ts_ms": now_ms}) + b"\n" + record.encode())
                if parked:
                    pipe.ltrim(self.keys.parked(partition), -keep, -1)
                    pipe.hincrby(self.keys.stats(partition), "parked", len(parked))
                pipe.ltrim(self.keys.outbox(partition), n, -1)
                await pipe.execute()
        except redis.RedisError as exc:
            raise StoreError(f"Redis outbox park failed: {exc}") from None

    async def trim_outbox(self, partition: int, n: int) -> None:
        """Drop the oldest ``n`` (produced) records of the partition's outbox. Raises :class:`StoreError`."""
        try:
            await self.r.ltrim(self.keys.outbox(partition), n, -1)
        except redis.RedisError as exc:
            raise StoreError(f"Redis outbox trim failed: {exc}") from None
