"""Redis adapter for the stream processor: batch reads, and one atomic apply per batch.

Exactly-once effects under at-least-once delivery: every batch of partition *p* is applied with
one Lua script that first compares the partition's applied-offset watermark ``P wm:<topic>:<p>``
with the offset the caller last saw, then runs the batch's ops (feature updates, joiner state,
counters, outbox records) and moves the watermark to the batch's last offset. A redelivered batch
(offsets at or below the watermark) is filtered out before it gets here; a caller with a stale
view (another worker took the partition over) gets ``False`` back and must re-read.

Per-partition keys (``P`` = key prefix, ``<p>`` = partition of the events topic):

``P wm:<topic>:<p>``  string  last applied offset
``P mt:<topic>:<p>``  string  max event time seen (ms), for the event-time watermark
``P seen:<p>``        zset    event_id -> offset; the dedup window (last N ids)
``P lx:<p>``          hash    ``user\\x1fitem`` -> JSON list of pending exposures
``P lxd:<p>``         zset    ``user\\x1fitem`` -> earliest window end (ms)
``P lf:<p>``          hash    ``user\\x1fitem`` -> JSON list of recent follow-ups (out of order)
``P ob:<p>``          list    outbox: records to produce (examples, DLQ), trimmed after acks
``P stats:<p>``       hash    counters: processed, accepted, invalid, duplicate, late, ...

The Lua script does not declare every key in KEYS, so it targets a single Redis (or a
Redis Cluster with all streamrec keys in one slot via a ``{tag}`` in the key prefix).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis

from streaming.errors import StoreError
from streaming.labels import Exposure

APPLY_LUA = r"""
local cur = redis.call('GET', KEYS[1]) or '-1'
if cur ~= ARGV[1] then return {0, cur} end
local ops = cjson.decode(ARGV[3])
local fmt = string.format
for _, op in ipairs(ops) do
  local name = op[1]
  if name == 'dadd' then
    local key, prefix, ts, w = op[2], op[3], tonumber(op[4]), tonumber(op[5])
    local ref = redis.call('HGET', key, prefix .. '.t')
    local newref = ts
    if ref then ref = tonumber(ref) end
    for j = 6, #op, 2 do
      local f = prefix .. '.' .. op[j]
      local h = tonumber(op[j + 1])
      local v
      if not ref then
        v = w
      else
        local old = tonumber(redis.call('HGET', key, f) or '0')
        if ts >= ref then
          v = old * 2 ^ (-(ts - ref) / h) + w
        else
          v = old + w * 2 ^ (-(ref - ts) / h)
          newref = ref
        end
      end
      redis.call('HSET', key, f, fmt('%.17g', v))
    end
    redis.call('HSET', key, prefix .. '.t', fmt('%d', newref))
  elseif name == 'hmax' or name == 'hmin' then
    local old = redis.call('HGET', op[2], op[3])
    local v = tonumber(op[4])
    if (not old) or (name == 'hmax' and v > tonumber(old)) or (name == 'hmin' and v < tonumber(old)) then
      redis.call('HSET', op[2], op[3], fmt('%d', v))
    end
  elseif name == 'hset' then
    redis.call('HSET', op[2], op[3], op[4])
  elseif name == 'hdel' then
    redis.call('HDEL', op[2], op[3])
  elseif name == 'hincr' then
    redis.call('HINCRBY', op[2], op[3], op[4])
  elseif name == 'lpush_trim' then
    redis.call('LPUSH', op[2], op[3])
    redis.call('LTRIM', op[2], 0, op[4] - 1)
  elseif name == 'zincr' then
    redis.call('ZINCRBY', op[2], op[4], op[3])
    local k = op[5]
    if k > 0 and redis.call('ZCARD', op[2]) > 2 * k then
      redis.call('ZREMRANGEBYRANK', op[2], 0, -(k + 1))
    end
  elseif name == 'zadd' then
    redis.call('ZADD', op[2], op[4], op[3])
  elseif name == 'zrem' then
    redis.call('ZREM', op[2], op[3])
  elseif name == 'ztrim' then
    if redis.call('ZCARD', op[2]) > op[3] then
      redis.call('ZREMRANGEBYRANK', op[2], 0, -(op[3] + 1))
    end
  elseif name == 'set' then
    redis.call('SET', op[2], op[3])
  else
    return redis.error_reply('unknown op ' .. tostring(name))
  end
end
local ob = KEYS[2]
for i = 4, #ARGV do
  redis.call('RPUSH', ob, ARGV[i])
end
redis.call('SET', KEYS[1], ARGV[2])
return {1, redis.call('LLEN', ob)}
"""


@dataclass(frozen=True, slots=True)
class OutMessage:
    """A record to produce after the apply commits (example or DLQ entry)."""

    topic: str
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()

    def encode(self) -> bytes:
        """Length-prefixed framing: binary-safe for arbitrary keys and values (DLQ bytes)."""
        parts = [self.topic.encode(), self.key if self.key is not None else b"",
                 orjson.dumps([[k, v.decode("latin-1")] for k, v in self.headers]), self.value]
        head = struct.pack(">B4I", 1 if self.key is not None else 0, *(len(p) for p in parts))
        return head + b"".join(parts)

    @classmethod
    def decode(cls, raw: bytes) -> OutMessage:
        has_key, *lens = struct.unpack_from(">B4I", raw)
        pos = struct.calcsize(">B4I")
        parts = []
        for n in lens:
            parts.append(raw[pos:pos + n])
            pos += n
        headers = tuple((k, v.encode("latin-1")) for k, v in orjson.loads(parts[2]))
        return cls(parts[0].decode(), parts[1] if has_key else None, parts[3], headers)


@dataclass(slots=True)
class BatchReads:
    """State that one batch needs, read in one pipeline before planning."""

    applied_offset: int
    max_ts: int | None
    seen: set[str]
    users: dict[str, dict[str, str]]
    recent: dict[str, list[str]]
    items: dict[str, dict[str, str]]
    pending: dict[str, list[Exposure]]
    followups: dict[str, list[tuple[str, int]]]
    popular: list[tuple[str, float]] = field(default_factory=list)


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class StateStore:
    """All Redis I/O of the stream processor. ``client`` is a ``redis.asyncio.Redis``."""

    def __init__(self, client: aioredis.Redis, key_prefix: str, topic: str) -> None:
        self.r = client
        self.p = key_prefix
        self.topic = topic
        self._apply = client.register_script(APPLY_LUA)

    # -- key names (also used by the processor to build ops) --
    def k_user(self, user: str) -> str:
        return f"{self.p}u:{user}"

    def k_recent(self, user: str) -> str:
        return f"{self.p}ur:{user}"

    def k_item(self, item: str) -> str:
        return f"{self.p}i:{item}"

    def k_covisit(self, item: str) -> str:
        return f"{self.p}cv:{item}"

    def k_popular(self) -> str:
        return f"{self.p}pop"

    def k_part(self, name: str, partition: int) -> str:
        if name in ("wm", "mt"):
            return f"{self.p}{name}:{self.topic}:{partition}"
        return f"{self.p}{name}:{partition}"

    async def read_batch(
        self,
        partition: int,
        event_ids: Sequence[str],
        users: Iterable[str],
        items: Iterable[str],
        pairs: Iterable[str],
        recent_n: int,
        popular_n: int = 0,
    ) -> BatchReads:
        users, items, pairs = list(users), list(items), list(pairs)
        try:
            async with self.r.pipeline(transaction=False) as pipe:
                pipe.get(self.k_part("wm", partition))
                pipe.get(self.k_part("mt", partition))
                if event_ids:
                    pipe.zmscore(self.k_part("seen", partition), list(event_ids))
                for u in users:
                    pipe.hgetall(self.k_user(u))
                    pipe.lrange(self.k_recent(u), 0, recent_n - 1)
                for i in items:
                    pipe.hgetall(self.k_item(i))
                if pairs:
                    pipe.hmget(self.k_part("lx", partition), pairs)
                    pipe.hmget(self.k_part("lf", partition), pairs)
                if popular_n:
                    pipe.zrevrange(self.k_popular(), 0, popular_n - 1, withscores=True)
                res = await pipe.execute()
        except redis.RedisError as exc:
            raise StoreError(f"Redis batch read failed: {exc}") from None
        it = iter(res)
        wm, mt = next(it), next(it)
        seen_scores = next(it) if event_ids else []
        out = BatchReads(
            applied_offset=int(wm) if wm is not None else -1,
            max_ts=int(mt) if mt is not None else None,
            seen={eid for eid, s in zip(event_ids, seen_scores, strict=True) if s is not None},
            users={}, recent={}, items={}, pending={}, followups={},
        )
        for u in users:
            out.users[u] = {_s(k): _s(v) for k, v in next(it).items()}
            out.recent[u] = [_s(x) for x in next(it)]
        for i in items:
            out.items[i] = {_s(k): _s(v) for k, v in next(it).items()}
        if pairs:
            for pair, raw in zip(pairs, next(it), strict=True):
                if raw is not None:
                    out.pending[pair] = [Exposure.from_dict(d) for d in orjson.loads(raw)]
            for pair, raw in zip(pairs, next(it), strict=True):
                if raw is not None:
                    out.followups[pair] = [(k, ts) for k, ts in orjson.loads(raw)]
        if popular_n:
            out.popular = [(_s(m), float(s)) for m, s in next(it)]
        return out

    async def read_due(
        self, partition: int, watermark: int, known: set[str]
    ) -> tuple[dict[str, list[Exposure]], list[str]]:
        """Pending exposures of pairs whose earliest window end is <= ``watermark`` (those not in
        ``known``), and the pairs whose follow-ups are all older than ``watermark``."""
        try:
            async with self.r.pipeline(transaction=False) as pipe:
                pipe.zrangebyscore(self.k_part("lxd", partition), "-inf", watermark)
                pipe.zrangebyscore(self.k_part("lfd", partition), "-inf", f"({watermark}")
                due_raw, expired_raw = await pipe.execute()
            missing = [p for p in map(_s, due_raw) if p not in known]
            raws = await self.r.hmget(self.k_part("lx", partition), missing) if missing else []
        except redis.RedisError as exc:
            raise StoreError(f"Redis read of due exposures failed: {exc}") from None
        due = {p: [Exposure.from_dict(d) for d in orjson.loads(raw)]
               for p, raw in zip(missing, raws, strict=True) if raw is not None}
        return due, [_s(p) for p in expired_raw]

    async def read_items(self, items: Sequence[str]) -> dict[str, dict[str, str]]:
        try:
            async with self.r.pipeline(transaction=False) as pipe:
                for i in items:
                    pipe.hgetall(self.k_item(i))
                res = await pipe.execute()
        except redis.RedisError as exc:
            raise StoreError(f"Redis item read failed: {exc}") from None
        return {i: {_s(k): _s(v) for k, v in h.items()} for i, h in zip(items, res, strict=True)}

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
        keys = [self.k_part("wm", partition), self.k_part("ob", partition)]
        args: list[Any] = [str(expected_offset), str(new_offset), orjson.dumps(ops)]
        args.extend(m.encode() for m in outbox)
        try:
            ok, outbox_len = await self._apply(keys=keys, args=args)
        except redis.RedisError as exc:
            raise StoreError(f"Redis apply failed: {exc}") from None
        return int(outbox_len) if ok else None

    async def outbox(self, partition: int, limit: int = 10_000) -> list[OutMessage]:
        try:
            raws = await self.r.lrange(self.k_part("ob", partition), 0, limit - 1)
        except redis.RedisError as exc:
            raise StoreError(f"Redis outbox read failed: {exc}") from None
        return [OutMessage.decode(r) for r in raws]

    async def trim_outbox(self, partition: int, n: int) -> None:
        try:
            await self.r.ltrim(self.k_part("ob", partition), n, -1)
        except redis.RedisError as exc:
            raise StoreError(f"Redis outbox trim failed: {exc}") from None

    async def stats(self, partitions: Iterable[int]) -> dict[str, int]:
        """Counters summed over ``partitions``."""
        total: dict[str, int] = {}
        for p in partitions:
            for k, v in (await self.r.hgetall(self.k_part("stats", p))).items():
                total[_s(k)] = total.get(_s(k), 0) + int(v)
        return total
