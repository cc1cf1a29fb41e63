-- The item change log since a scorer's cursor (streaming.serving.ranker.FeedRanker.sync_items):
-- ingest scores every item whose hash a batch changed with that batch's sequence number
-- (streaming/ingest/lua/apply.lua, op 'changed'), so the scorer re-reads only those.
-- KEYS[1]: the log (zset), KEYS[2]: its meta hash ('seq', 'floor'); ARGV[1]: the sequence
-- number the caller synced to last (-1: never). Returns {seq, floor, items changed after the
-- cursor}; no items when the cursor is outside [floor, seq] (the caller drops its whole cache).
local seq = tonumber(redis.call('HGET', KEYS[2], 'seq') or '0')
local floor = tonumber(redis.call('HGET', KEYS[2], 'floor') or '0')
local cursor = tonumber(ARGV[1])
if cursor < floor or cursor > seq then return {seq, floor, {}} end
return {seq, floor, redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf')}
