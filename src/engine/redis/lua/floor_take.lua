-- Claims a PTT floor. KEYS[1]: {p}floor:CHANNEL, a hash: h = the holder (session id),
-- t = the talker (user, talk, layout: opaque here), s = when it was taken and i = when it
-- goes idle (Unix ms, Redis' clock; no i: never); after a takeover also ph, pt, pe = the
-- session and talker it was taken from and how long that one had held it (ms).
-- KEYS[2]: {p}floor_lapses, the leases of the channel shard's floors (member
-- "CHANNEL\nHOLDER", score = when the lease lapses plus the grace; see floor_lease.lua);
-- KEYS[3]: {p}floor_talks, the same members' talks ("s\nt\nLISTENERS"), which a router
-- claiming an orphaned floor announces the end of (floor_orphans.lua).
-- ARGV: holder, talker, hold_ms, idle_ms (0: this router takes no idle floor over, and
-- the floor it grants never goes idle), channel, listeners, lease_ms, grace_ms.
-- Returns {1} granted (also to its holder), {0} busy, or {2, session, talker, held_ms}:
-- taken over from a talker idle past its i. The key lapses after hold_ms on its own, so
-- a crashed router never keeps a channel busy past the maximum talk time; its lease
-- lapses sooner, and another router then ends its talk.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local idle = tonumber(ARGV[4])
if redis.call('TYPE', KEYS[1]).ok == 'string' then
  -- Taken by a router of an older version (the holder's session id alone): never idle.
  if redis.call('GET', KEYS[1]) == ARGV[1] then return {1} end
  return {0}
end
local f = redis.call('HMGET', KEYS[1], 'h', 's', 'i', 't', 'ph', 'pt', 'pe')
if f[1] == ARGV[1] then
  -- Its holder again (a call replayed after its reply was lost): the same answer.
  if f[5] then return {2, f[5], f[6], f[7]} end
  return {1}
end
local taken = nil
if f[1] then
  if idle == 0 or not f[3] or now < tonumber(f[3]) then return {0} end
  taken = {2, f[1], f[4], tostring(now - tonumber(f[2]))}
  -- The talk taken over is ended by its taker, never as an orphan.
  redis.call('ZREM', KEYS[2], ARGV[5] .. '\n' .. f[1])
  redis.call('HDEL', KEYS[3], ARGV[5] .. '\n' .. f[1])
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'h', ARGV[1], 't', ARGV[2], 's', now)
if idle > 0 then redis.call('HSET', KEYS[1], 'i', now + idle) end
if taken then redis.call('HSET', KEYS[1], 'ph', taken[2], 'pt', taken[3], 'pe', taken[4]) end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
local lease = ARGV[5] .. '\n' .. ARGV[1]
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[7]) + tonumber(ARGV[8]), lease)
redis.call('HSET', KEYS[3], lease, now .. '\n' .. ARGV[2] .. '\n' .. ARGV[6])
return taken or {1}
