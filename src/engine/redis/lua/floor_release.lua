-- Gives a PTT floor back if ARGV[1] still holds it; its talk's lease ends either way (the
-- talk is over, even when its key lapsed at the maximum talk time first).
-- KEYS[1]: {p}floor:CHANNEL (see floor_take.lua; a plain string when a router of an older
-- version took it); KEYS[2]: {p}floor_lapses; KEYS[3]: {p}floor_talks.
-- ARGV: holder, channel.
local lease = ARGV[2] .. '\n' .. ARGV[1]
redis.call('ZREM', KEYS[2], lease)
redis.call('HDEL', KEYS[3], lease)
local kind = redis.call('TYPE', KEYS[1]).ok
if (kind == 'hash' and redis.call('HGET', KEYS[1], 'h') == ARGV[1])
    or (kind == 'string' and redis.call('GET', KEYS[1]) == ARGV[1]) then
  return redis.call('DEL', KEYS[1])
end
return 0
