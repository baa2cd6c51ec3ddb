-- Sets or clears one indicator. KEYS[1]: the group's indicator zset ({p}indicators:G,
-- member "type:user", score = when it lapses, Unix ms on Redis' clock).
-- ARGV: member, ttl_ms (0 = clear). Lapsed members are trimmed on every write.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if ttl == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 0
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
-- The key outlives its longest-lived member, and no more.
if redis.call('PEXPIRE', KEYS[1], ttl, 'GT') == 0 and redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1
