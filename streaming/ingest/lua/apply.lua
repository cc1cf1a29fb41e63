-- Applies one planned batch of one partition atomically (streaming.ingest.state_store.StateStore.apply).
-- KEYS[1]: the partition's applied-offset watermark; KEYS[2]: its outbox list.
-- ARGV[1]: the watermark the caller read (the batch is refused if it moved); ARGV[2]: the
-- batch's last offset; ARGV[3]: the ops as JSON (streaming.ingest.plan); ARGV[4..]: outbox
-- records. Returns {1, outbox length} or {0, current watermark}.
-- The ops name their keys themselves (built by streaming.contract.names.Keys), so this script
-- targets one Redis, or a Redis Cluster with every streamrec key in one slot ({tag} prefix).
local cur = redis.call('GET', KEYS[1]) or '-1'
if cur ~= ARGV[1] then return {0, cur} end
local ops = cjson.decode(ARGV[3])
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
    if op[5] > 0 then trim_top(op[2], op[5]) end
  elseif name == 'zdecay' then
    -- op: key, member, ts (ms), weight, half-life (ms), K, t0 key. Score += w * 2^((ts - t0) / h),
    -- t0 kept in the t0 key (see streaming.features.state); score order = trending order.
    local key, ts, h, k, t0key = op[2], tonumber(op[4]), tonumber(op[6]), op[7], op[8]
    local t0 = tonumber(redis.call('GET', t0key) or '')
    if not t0 or (ts - t0) / h > 64 then
      if t0 then rescale(key, 2 ^ (-(ts - t0) / h)) end
      t0 = ts
      redis.call('SET', t0key, fmt('%d', ts))
    end
    redis.call('ZINCRBY', key, fmt('%.17g', tonumber(op[5]) * 2 ^ ((ts - t0) / h)), op[3])
    trim_top(key, k)
  elseif name == 'uitouch' then
    -- op: ui hash, uz zset, item, type (1 view, 2 click, 3 purchase), ts (ms), weight,
    -- half-life (ms), K. The entry "v c p t w" (counts, last touch, weight decayed-added as
    -- 'dadd' does; streaming.features.state.touch_user_item); uz orders the user's items by
    -- weight, referenced to t0 (hash field \31t0) like 'zdecay'; beyond 2K items the lightest
    -- are dropped from both back to K.
    local hk, zk, item, ty = op[2], op[3], op[4], op[5]
    local ts, w, h, k = tonumber(op[6]), tonumber(op[7]), tonumber(op[8]), op[9]
    local cnt, t, x = {0, 0, 0}, ts, w
    local cur = redis.call('HGET', hk, item)
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
    local t0 = tonumber(redis.call('HGET', hk, '\31t0') or '')
    if not t0 or (t - t0) / h > 64 then
      if t0 then rescale(zk, 2 ^ (-(t - t0) / h)) end
      t0 = t
      redis.call('HSET', hk, '\31t0', fmt('%d', t))
    end
    redis.call('ZADD', zk, fmt('%.17g', x * 2 ^ ((t - t0) / h)), item)
    local dropped = trim_top(zk, k)
    if dropped then redis.call('HDEL', hk, unpack(dropped)) end
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
  elseif name == 'changed' then
    -- op: log zset, meta hash, K, items...: the items whose hash this batch changed, scored by
    -- the batch's sequence number (meta 'seq'); scorers drop them from their item caches
    -- (streaming.serving.ranker). Beyond 2K entries the oldest go back to K, and meta 'floor'
    -- keeps the newest number dropped: a scorer whose cursor is older re-reads every item.
    local key, meta, k = op[2], op[3], op[4]
    local seq = redis.call('HINCRBY', meta, 'seq', 1)
    for j = 5, #op do redis.call('ZADD', key, seq, op[j]) end
    if redis.call('ZCARD', key) > 2 * k then
      local last = redis.call('ZRANGE', key, -(k + 1), -(k + 1), 'WITHSCORES')
      redis.call('ZREMRANGEBYRANK', key, 0, -(k + 1))
      redis.call('HSET', meta, 'floor', last[2])
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
