-- Applies one planned batch of one partition atomically (streaming.ingest.state_store.StateStore.apply).
-- KEYS[1]: the partition's applied-offset watermark; KEYS[2]: its outbox list.
-- ARGV[1]: the watermark the caller read (the batch is refused if it moved); ARGV[2]: the
-- batch's last offset; ARGV[3]: the ops (streaming.ingest.plan) as one flat MessagePack array,
-- each op's name followed by its arguments (their number is fixed per name below; 'dadd' and
-- 'changed' carry a count); ARGV[4..]: outbox records. Returns {1, outbox length} or
-- {0, current watermark}. Flat MessagePack, not JSON: decoding the ops was a quarter of this
-- script's time as JSON arrays (one Lua table per op), a third of that as a flat array.
-- The ops name their keys themselves (built by streaming.contract.names.Keys), so this script
-- targets one Redis, or a Redis Cluster with every streamrec key in one slot ({tag} prefix).
local cur = redis.call('GET', KEYS[1]) or '-1'
if cur ~= ARGV[1] then return {0, cur} end
local a = cmsgpack.unpack(ARGV[3])
local fmt = string.format

-- Multiply every score of a zset by f (rebasing decayed scores to a newer reference time).
local function rescale(key, f)
  local all = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
  for j = 1, #all, 2 do
    redis.call('ZADD', key, fmt('%.17g', tonumber(all[j + 1]) * f), all[j])
  end
end

-- Beyond 2K members, keep the K highest; returns the dropped members (or nil).
local function trim_top(key, k)
  if redis.call('ZCARD', key) <= 2 * k then return nil end
  local drop = redis.call('ZRANGE', key, 0, -(k + 1))
  redis.call('ZREMRANGEBYRANK', key, 0, -(k + 1))
  return drop
end
local t0s = {}  -- zdecay reference times read or set in this batch, by key
local i, n = 1, #a
while i <= n do
  local name = a[i]
  if name == 'dadd' then
    -- key, prefix, ts, weight, count, then count (label, half-life ms) pairs: one HMGET and
    -- one HSET for the reference time <prefix>.t and every counter <prefix>.<label>.
    local key, prefix, ts, w, c = a[i + 1], a[i + 2], a[i + 3], a[i + 4], a[i + 5]
    local names = {prefix .. '.t'}
    for j = 1, c do names[j + 1] = prefix .. '.' .. a[i + 4 + 2 * j] end
    local cur = redis.call('HMGET', key, unpack(names))
    local ref = cur[1] and tonumber(cur[1])
    local newref = ts
    local out = {}
    for j = 1, c do
      local h = a[i + 5 + 2 * j]
      local v
      if not ref then
        v = w
      else
        local old = tonumber(cur[j + 1] or '0')
        if ts >= ref then
          v = old * 2 ^ (-(ts - ref) / h) + w
        else
          v = old + w * 2 ^ (-(ref - ts) / h)
          newref = ref
        end
      end
      out[2 * j - 1], out[2 * j] = names[j + 1], fmt('%.17g', v)
    end
    out[2 * c + 1], out[2 * c + 2] = names[1], fmt('%d', newref)
    redis.call('HSET', key, unpack(out))
    i = i + 6 + 2 * c
  elseif name == 'hmax' or name == 'hmin' then
    -- key, field, value
    local old = redis.call('HGET', a[i + 1], a[i + 2])
    local v = a[i + 3]
    if (not old) or (name == 'hmax' and v > tonumber(old)) or (name == 'hmin' and v < tonumber(old)) then
      redis.call('HSET', a[i + 1], a[i + 2], fmt('%d', v))
    end
    i = i + 4
  elseif name == 'hset' then
    -- key, field, value
    redis.call('HSET', a[i + 1], a[i + 2], a[i + 3])
    i = i + 4
  elseif name == 'hdel' then
    -- key, field
    redis.call('HDEL', a[i + 1], a[i + 2])
    i = i + 3
  elseif name == 'hincr' then
    -- key, field, increment
    redis.call('HINCRBY', a[i + 1], a[i + 2], a[i + 3])
    i = i + 4
  elseif name == 'lpush_trim' then
    -- key, value, length kept
    redis.call('LPUSH', a[i + 1], a[i + 2])
    redis.call('LTRIM', a[i + 1], 0, a[i + 3] - 1)
    i = i + 4
  elseif name == 'zincr' then
    -- key, member, increment, K (0: no trim)
    redis.call('ZINCRBY', a[i + 1], a[i + 3], a[i + 2])
    if a[i + 4] > 0 then trim_top(a[i + 1], a[i + 4]) end
    i = i + 5
  elseif name == 'zdecay' then
    -- key, member, ts (ms), weight, half-life (ms), K, t0 key. Score += w * 2^((ts - t0) / h),
    -- t0 kept in the t0 key (see streaming.features.state); score order = trending order.
    local key, ts, h, k, t0key = a[i + 1], a[i + 3], a[i + 5], a[i + 6], a[i + 7]
    local t0 = t0s[t0key]
    if t0 == nil then t0 = tonumber(redis.call('GET', t0key) or '') or false end
    if not t0 or (ts - t0) / h > 64 then
      if t0 then rescale(key, 2 ^ (-(ts - t0) / h)) end
      t0 = ts
      redis.call('SET', t0key, fmt('%d', ts))
    end
    t0s[t0key] = t0
    redis.call('ZINCRBY', key, fmt('%.17g', a[i + 4] * 2 ^ ((ts - t0) / h)), a[i + 2])
    trim_top(key, k)
    i = i + 8
  elseif name == 'uitouch' then
    -- ui hash, uz zset, item, type (1 view, 2 click, 3 purchase), ts (ms), weight,
    -- half-life (ms), K. The entry "v c p t w" (counts, last touch, weight decayed-added as
    -- 'dadd' does; streaming.features.state.touch_user_item); uz orders the user's items by
    -- weight, referenced to t0 (hash field \31t0) like 'zdecay'; beyond 2K items the lightest
    -- are dropped from both back to K.
    local hk, zk, item, ty = a[i + 1], a[i + 2], a[i + 3], a[i + 4]
    local ts, w, h, k = a[i + 5], a[i + 6], a[i + 7], a[i + 8]
    local cnt, t, x = {0, 0, 0}, ts, w
    local both = redis.call('HMGET', hk, item, '\31t0')
    local cur = both[1]
    if cur then
      local f = {}
      for s in string.gmatch(cur, '%S+') do f[#f + 1] = tonumber(s) end
      cnt = {f[1], f[2], f[3]}
      t, x = f[4], f[5]
      if ts >= t then
        x = x * 2 ^ (-(ts - t) / h) + w
        t = ts
      else
        x = x + w * 2 ^ (-(t - ts) / h)
      end
    end
    cnt[ty] = cnt[ty] + 1
    redis.call('HSET', hk, item, fmt('%d %d %d %d %.17g', cnt[1], cnt[2], cnt[3], t, x))
    local t0 = tonumber(both[2] or '')
    if not t0 or (t - t0) / h > 64 then
      if t0 then rescale(zk, 2 ^ (-(t - t0) / h)) end
      t0 = t
      redis.call('HSET', hk, '\31t0', fmt('%d', t))
    end
    redis.call('ZADD', zk, fmt('%.17g', x * 2 ^ ((t - t0) / h)), item)
    local dropped = trim_top(zk, k)
    if dropped then redis.call('HDEL', hk, unpack(dropped)) end
    i = i + 9
  elseif name == 'zadd' then
    -- key, member, score
    redis.call('ZADD', a[i + 1], a[i + 3], a[i + 2])
    i = i + 4
  elseif name == 'zadd_min' then
    -- key, member, score, K: score = earliest event time seen (LT: order-independent); keep
    -- the newest K members
    local key, k = a[i + 1], a[i + 4]
    if redis.call('ZADD', key, 'LT', a[i + 3], a[i + 2]) == 1 and redis.call('ZCARD', key) > k then
      redis.call('ZREMRANGEBYRANK', key, 0, -(k + 1))
    end
    i = i + 5
  elseif name == 'zrem' then
    -- key, member
    redis.call('ZREM', a[i + 1], a[i + 2])
    i = i + 3
  elseif name == 'ztrim' then
    -- key, K: keep the K highest
    if redis.call('ZCARD', a[i + 1]) > a[i + 2] then
      redis.call('ZREMRANGEBYRANK', a[i + 1], 0, -(a[i + 2] + 1))
    end
    i = i + 3
  elseif name == 'changed' then
    -- log zset, meta hash, K, count, items: the items whose hash this batch changed, scored by
    -- the batch's sequence number (meta 'seq'); scorers drop them from their item caches
    -- (streaming.serving.ranker). Beyond 2K entries the oldest go back to K, and meta 'floor'
    -- keeps the newest number dropped: a scorer whose cursor is older re-reads every item.
    local key, meta, k, c = a[i + 1], a[i + 2], a[i + 3], a[i + 4]
    local seq = redis.call('HINCRBY', meta, 'seq', 1)
    for j = i + 5, i + 4 + c do redis.call('ZADD', key, seq, a[j]) end
    if redis.call('ZCARD', key) > 2 * k then
      local last = redis.call('ZRANGE', key, -(k + 1), -(k + 1), 'WITHSCORES')
      redis.call('ZREMRANGEBYRANK', key, 0, -(k + 1))
      redis.call('HSET', meta, 'floor', last[2])
    end
    i = i + 5 + c
  elseif name == 'set' then
    -- key, value
    redis.call('SET', a[i + 1], a[i + 2])
    i = i + 3
  else
    return redis.error_reply('unknown op ' .. tostring(name) .. ' at ' .. i)
  end
end
local ob = KEYS[2]
for j = 4, #ARGV do
  redis.call('RPUSH', ob, ARGV[j])
end
redis.call('SET', KEYS[1], ARGV[2])
return {1, redis.call('LLEN', ob)}
