-- Item feature hashes for a scorer (streaming.serving.ranker.FeedRanker.read_items) in one call
-- instead of one pipelined HGETALL per item: redis-py spends several times longer packing a
-- command and parsing its reply than Redis spends running it.
-- KEYS: the items' feature hashes. Returns one flat field, value, ... array per key ({} = absent).
local out = {}
for i, key in ipairs(KEYS) do out[i] = redis.call('HGETALL', key) end
return out
