-- A scorer's reads for a batch of users (streaming.serving.ranker.FeedRanker.read_users) in one
-- call instead of six pipelined commands per user: redis-py spends several times longer
-- packing a command and parsing its reply than Redis spends running it.
-- KEYS: per user, 6 keys: feature hash, recent list, purchased zset, user x item hash, its
--       order zset, neighbour list zset; then sorted sets read as ranked lists.
-- ARGV: recent_n, again_n (the order zset's first), n_users, then per list how many of it.
-- Returns {users, lists}: per user {HGETALL, LRANGE 0 recent_n-1, ZRANGE 0 -1, HGETALL,
-- ZREVRANGE 0 again_n-1 WITHSCORES, ZREVRANGE 0 -1 WITHSCORES}; per list ZREVRANGE 0 n-1
-- WITHSCORES (flat member, score).
local recent_n, again_n, n_users = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local users, lists = {}, {}
for j = 1, n_users do
  local b = 6 * (j - 1)
  users[j] = {redis.call('HGETALL', KEYS[b + 1]), redis.call('LRANGE', KEYS[b + 2], 0, recent_n - 1),
              redis.call('ZRANGE', KEYS[b + 3], 0, -1), redis.call('HGETALL', KEYS[b + 4]),
              redis.call('ZREVRANGE', KEYS[b + 5], 0, again_n - 1, 'WITHSCORES'),
              redis.call('ZREVRANGE', KEYS[b + 6], 0, -1, 'WITHSCORES')}
end
for j = 6 * n_users + 1, #KEYS do
  local n = tonumber(ARGV[3 + j - 6 * n_users])
  lists[#lists + 1] = redis.call('ZREVRANGE', KEYS[j], 0, n - 1, 'WITHSCORES')
end
return {users, lists}
