-- Reads everything one batch of one partition needs (streaming.ingest.state_store.StateStore.read_batch).
-- KEYS: 1 applied offset, 2 max event time, 3 seen ids, 4 pending exposures (lx),
--       5 follow-ups (lf), 6 exposure deadlines (lxd), 7 follow-up times (lfd), 8 trending;
--       then per user: feature hash, recent list, user x item hash, neighbour list; then per
--       item: feature hash.
-- ARGV: recent_n, trending_n, batch max event time ('' = none), allowed lateness ms
--       ('' = no label windows), #users, #items, #event ids, #pairs, event ids..., pairs...,
--       then per user the number of its user x item entries wanted ('' = all) and their items.
local recent_n, trending_n = tonumber(ARGV[1]), tonumber(ARGV[2])
local batch_max, lateness = tonumber(ARGV[3]), tonumber(ARGV[4])
local n_users, n_items, n_ids = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local n_pairs = tonumber(ARGV[8])
local ids, prs = {}, {}
for j = 1, n_ids do ids[j] = ARGV[8 + j] end
for j = 9 + n_ids, 8 + n_ids + n_pairs do prs[#prs + 1] = ARGV[j] end
local wanted, at = {}, 9 + n_ids + n_pairs
for j = 1, n_users do
  if ARGV[at] == '' then
    at = at + 1
  else
    local n = tonumber(ARGV[at])
    wanted[j] = {unpack(ARGV, at + 1, at + n)}
    at = at + n + 1
  end
end
local res = {}
res[1] = redis.call('GET', KEYS[1]) or ''
res[2] = redis.call('GET', KEYS[2]) or ''
res[3] = #ids > 0 and redis.call('ZMSCORE', KEYS[3], unpack(ids)) or {}
local u, r, ui, nb = {}, {}, {}, {}
for j = 1, n_users do
  local b = 8 + 4 * (j - 1)
  u[j] = redis.call('HGETALL', KEYS[b + 1])
  r[j] = redis.call('LRANGE', KEYS[b + 2], 0, recent_n - 1)
  -- Whole (serving.neighbour_items entries at most): the negatives an example gets are drawn
  -- after this read, and each needs its score.
  nb[j] = redis.call('ZRANGE', KEYS[b + 4], 0, -1, 'WITHSCORES')
  if wanted[j] then
    -- Only the batch's own items (exposure labelling): a user's hash holds up to 2 x
    -- stream.user_items_kept entries, which a whole HGETALL returned for nothing.
    local vals = #wanted[j] > 0 and redis.call('HMGET', KEYS[b + 3], unpack(wanted[j])) or {}
    local flat = {}
    for k, v in ipairs(vals) do
      if v then flat[#flat + 1] = wanted[j][k]; flat[#flat + 1] = v end
    end
    ui[j] = flat
  else
    ui[j] = redis.call('HGETALL', KEYS[b + 3])
  end
end
res[4], res[5], res[13], res[14] = u, r, ui, nb
local it = {}
local base = 8 + 4 * n_users
for j = 1, n_items do it[j] = redis.call('HGETALL', KEYS[base + j]) end
res[6] = it
if #prs > 0 then
  res[7] = redis.call('HMGET', KEYS[4], unpack(prs))
  res[8] = redis.call('HMGET', KEYS[5], unpack(prs))
else
  res[7], res[8] = {}, {}
end
res[9] = trending_n > 0 and redis.call('ZREVRANGE', KEYS[8], 0, trending_n - 1, 'WITHSCORES') or {}
-- Label windows that the batch's new watermark closes, and follow-ups it expires.
local newmax = batch_max
if res[2] ~= '' and (newmax == nil or tonumber(res[2]) > newmax) then newmax = tonumber(res[2]) end
res[10], res[11], res[12] = {}, {}, {}
if lateness and newmax then
  local wm = newmax - lateness
  local due = redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', wm)
  for j, pair in ipairs(due) do
    res[10][j] = pair
    res[11][j] = redis.call('HGET', KEYS[4], pair)
  end
  res[12] = redis.call('ZRANGEBYSCORE', KEYS[7], '-inf', '(' .. wm)
end
return res
