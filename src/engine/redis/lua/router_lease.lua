-- Renews a router's lease on one shard (see `{p}routers` in prelude.lua) for ARGV[2] ms.
-- KEYS[1]: the shard's {p}routers; ARGV[1]: the router's entry there; ARGV[2]: the lease
-- in ms. A lapsed lease is not renewed: the sweep brings that router's sessions back
-- within their deadlines first, then drops its entry, and only then may it hold a lease
-- again. Returns {1 when held and renewed, 0 when it was not listed (now it holds a new
-- lease), -1 when it lapsed and is still listed; Redis' clock in Unix ms}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local held = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]))
if held and held <= now then
  return {-1, now}
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return {held and 1 or 0, now}
