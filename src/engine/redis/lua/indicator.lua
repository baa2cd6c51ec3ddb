-- Sets or clears one indicator. KEYS[1]: the group's indicator zset ({p}indicators:G,
-- member "type:user", score = when it lapses, Unix ms on Redis' clock); KEYS[2]: the
-- cluster-wide index of lapses ({p}indicator_lapses, member "G\ntype:user", score = the
-- lapse plus ARGV[4] ms of grace). ARGV: member, ttl_ms (0 = clear), group, grace_ms.
-- Lapsed members are trimmed on every write. The router holding an indicator clears it
-- itself when it ends; the index lets another router announce the end of one whose
-- router died (indicator_lapses.lua), after the grace, so never both.
-- Returns 1 for a set; for a clear, 1 when the indicator was still indexed (its end is
-- for the caller to announce, if it does not end its own), else 0.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local indexed = ARGV[3] .. '\n' .. ARGV[1]
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if ttl == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return redis.call('ZREM', KEYS[2], indexed)
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('ZADD', KEYS[2], now + ttl + tonumber(ARGV[4]), indexed)
-- The key outlives its longest-lived member, and no more.
if redis.call('PEXPIRE', KEYS[1], ttl, 'GT') == 0 and redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1
