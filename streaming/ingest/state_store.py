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
from streaming.features.labels import Exposure

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
  elseif name == 'zdecay' then
    -- op: key, member, ts (ms), weight, half-life (ms), K. Score += w * 2^((ts - t0) / h), t0
    -- kept in key..':t0' (see streaming.features.state); the order of scores is the trending order.
    local key, ts, h, k = op[2], tonumber(op[4]), tonumber(op[6]), op[7]
    local t0 = tonumber(redis.call('GET', key .. ':t0') or '')
    if not t0 or (ts - t0) / h > 64 then
      if t0 then
        local f = 2 ^ (-(ts - t0) / h)
        local all = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
        for j = 1, #all, 2 do
          redis.call('ZADD', key, fmt('%.17g', tonumber(all[j + 1]) * f), all[j])
        end
      end
      t0 = ts
      redis.call('SET', key .. ':t0', fmt('%d', ts))
    end
    redis.call('ZINCRBY', key, fmt('%.17g', tonumber(op[5]) * 2 ^ ((ts - t0) / h)), op[3])
    if redis.call('ZCARD', key) > 2 * k then
      redis.call('ZREMRANGEBYRANK', key, 0, -(k + 1))
    end
  elseif name == 'zadd' then
    redis.call('ZADD', op[2], op[4], op[3])
  elseif name == 'zadd_min' then
    -- score = earliest event time seen (LT: order-independent); keep the newest op[5] members
    if redis.call('ZADD', op[2], 'LT', op[4], op[3]) == 1 and redis.call('ZCARD', op[2]) > op[5] then
      redis.call('ZREMRANGEBYRANK', op[2], 0, -(op[5] + 1))
    end
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


READ_LUA = r"""
-- ARGV: prefix, partition, topic, recent_n, trending_n, batch max event time ('' = none),
-- allowed lateness ms ('' = no label windows), then counted lists:
-- n, event ids..., n, users..., n, items..., n, pairs...
local P, part, topic = ARGV[1], ARGV[2], ARGV[3]
local recent_n, trending_n = tonumber(ARGV[4]), tonumber(ARGV[5])
local batch_max, lateness = tonumber(ARGV[6]), tonumber(ARGV[7])
local i = 8
local function list()
  local n = tonumber(ARGV[i]); local out = {}
  for j = 1, n do out[j] = ARGV[i + j] end
  i = i + n + 1
  return out
end
local ids, users, items, pairs = list(), list(), list(), list()
local res = {}
res[1] = redis.call('GET', P .. 'wm:' .. topic .. ':' .. part) or ''
res[2] = redis.call('GET', P .. 'mt:' .. topic .. ':' .. part) or ''
res[3] = #ids > 0 and redis.call('ZMSCORE', P .. 'seen:' .. part, unpack(ids)) or {}
local u, r = {}, {}
for j, user in ipairs(users) do
  u[j] = redis.call('HGETALL', P .. 'u:' .. user)
  r[j] = redis.call('LRANGE', P .. 'ur:' .. user, 0, recent_n - 1)
end
res[4], res[5] = u, r
local it = {}
for j, item in ipairs(items) do it[j] = redis.call('HGETALL', P .. 'i:' .. item) end
res[6] = it
if #pairs > 0 then
  res[7] = redis.call('HMGET', P .. 'lx:' .. part, unpack(pairs))
  res[8] = redis.call('HMGET', P .. 'lf:' .. part, unpack(pairs))
else
  res[7], res[8] = {}, {}
end
res[9] = trending_n > 0 and redis.call('ZREVRANGE', P .. 'trend', 0, trending_n - 1, 'WITHSCORES') or {}
-- Label windows that the batch's new watermark closes, and follow-ups it expires.
local newmax = batch_max
if res[2] ~= '' and (newmax == nil or tonumber(res[2]) > newmax) then newmax = tonumber(res[2]) end
res[10], res[11], res[12] = {}, {}, {}
if lateness and newmax then
  local wm = newmax - lateness
  local due = redis.call('ZRANGEBYSCORE', P .. 'lxd:' .. part, '-inf', wm)
  local lx = P .. 'lx:' .. part
  for j, pair in ipairs(due) do
    res[10][j] = pair
    res[11][j] = redis.call('HGET', lx, pair)
  end
  res[12] = redis.call('ZRANGEBYSCORE', P .. 'lfd:' .. part, '-inf', '(' .. wm)
end
return res
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
    trending: list[tuple[str, float]] = field(default_factory=list)  # hottest first
    expired_followups: list[str] = field(default_factory=list)


def as_text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def parse_state_hash(fields: Iterable[tuple[bytes, bytes]]) -> dict[str, Any]:
    """A ``u:``/``i:`` hash as read from Redis, with values parsed once: floats, except the
    ``cat`` field (a string)."""
    out: dict[str, Any] = {}
    for raw_name, raw_value in fields:
        name = raw_name.decode()
        out[name] = raw_value.decode() if name == "cat" else float(raw_value)
    return out


def _pairs(flat: Sequence[bytes]) -> dict[str, Any]:
    """A Lua HGETALL reply (flat field, value, ...) as :func:`parse_state_hash` does it."""
    return parse_state_hash(zip(flat[::2], flat[1::2], strict=True))


def read_stats(client: redis.Redis, key_prefix: str, partitions: Iterable[int]) -> dict[str, int]:
    """Processor counters summed over ``partitions`` (sync client; for CLIs and monitors)."""
    total: dict[str, int] = {}
    try:
        with client.pipeline(transaction=False) as pipe:
            for p in partitions:
                pipe.hgetall(f"{key_prefix}stats:{p}")
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
        self.p = key_prefix
        self.topic = topic
        self._apply = client.register_script(APPLY_LUA)
        self._read = client.register_script(READ_LUA)

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

    def k_trending(self) -> str:
        return f"{self.p}trend"

    def k_category_items(self, category: str) -> str:
        return f"{self.p}ci:{category}"

    def k_new_items(self) -> str:
        return f"{self.p}new"

    def k_purchased(self, user: str) -> str:
        return f"{self.p}ub:{user}"

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
        trending_n: int = 0,
        batch_max_ts: int | None = None,
        lateness_ms: int | None = None,
    ) -> BatchReads:
        """Everything a batch needs, in one server-side script (one round trip; hundreds of
        keys per batch would otherwise cost more in client-side command handling than in Redis).

        With ``lateness_ms`` (exposure labelling), also the pending exposures whose window the
        batch's new watermark (``max(stored, batch_max_ts) - lateness_ms``) closes, and the
        follow-up pairs it expires.
        """
        users, items, pairs = list(users), list(items), list(pairs)
        args: list[Any] = [self.p, partition, self.topic, recent_n, trending_n,
                           "" if batch_max_ts is None else batch_max_ts,
                           "" if lateness_ms is None else lateness_ms]
        for seq in (event_ids, users, items, pairs):
            args.append(len(seq))
            args.extend(seq)
        try:
            res = await self._read(keys=[], args=args)
        except redis.RedisError as exc:
            raise StoreError(f"Redis batch read failed: {exc}") from None
        wm, mt, seen_scores, user_h, recent_l, item_h, lx, lf, trending, due, due_raw, exp = res
        out = BatchReads(
            applied_offset=int(wm) if wm else -1,
            max_ts=int(mt) if mt else None,
            seen={eid for eid, sc in zip(event_ids, seen_scores, strict=True) if sc is not None},
            users={u: _pairs(h) for u, h in zip(users, user_h, strict=True)},
            recent={u: [as_text(x) for x in r] for u, r in zip(users, recent_l, strict=True)},
            items={i: _pairs(h) for i, h in zip(items, item_h, strict=True)},
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
        try:
            async with self.r.pipeline(transaction=False) as pipe:
                for i in items:
                    pipe.hgetall(self.k_item(i))
                res = await pipe.execute()
        except redis.RedisError as exc:
            raise StoreError(f"Redis item read failed: {exc}") from None
        return {i: parse_state_hash(h.items()) for i, h in zip(items, res, strict=True)}

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
