-- Renews a router's lease on one shard (see `{p}routers` in prelude.lua). KEYS: the
-- shard's {p}routers and {p}router:R:writes. ARGV: the router's entry there, the lease in ms, the latest moment
-- the renewal may count from (Unix ms: the router wrote the real deadlines due within its
-- grace after that moment, not after a later one), and the lease's score as the router
-- last renewed it (0: not known), and the count of its writes it knows Redis took (see
-- `extend.lua`; 0: not known). A lapsed lease is not renewed: the sweep brings that
-- router's sessions back within their deadlines first, then drops its entry, and only
-- then may it hold a lease again. Returns {1 when held and renewed, 0 when it holds a new
-- lease (it held none, or not the one it renewed last, or Redis counts fewer of its
-- writes than it knows were taken: Redis lost or went back on its writes), -1 when it
-- lapsed and is still listed; the lease's score; the count of its writes}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local held = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]))
local count = tonumber(redis.call('GET', KEYS[2])) or 0
if held and held <= now then
  return {-1, held, count}
end
-- Scores only grow while held, so a renewal run twice (its reply lost with its
-- connection) still finds its own lease; one below the last renewal is from before it.
local state = 0
if held and held >= tonumber(ARGV[4]) and count >= tonumber(ARGV[5]) then
  state = 1
end
local score = math.max(math.min(now, tonumber(ARGV[3])) + tonumber(ARGV[2]), held or 0)
redis.call('ZADD', KEYS[1], score, ARGV[1])
return {state, score, count}
