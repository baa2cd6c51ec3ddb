-- Renews the lease of a talk whose router still serves it: it lapses ARGV[3] ms from now,
-- and is claimed as an orphan ARGV[4] ms after that. KEYS[1]: {p}floor_lapses (see
-- floor_take.lua). ARGV: holder, channel, lease_ms, grace_ms. Nothing for a talk whose
-- lease is gone (given back, taken over, or claimed as an orphan: never revived).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = ARGV[2] .. '\n' .. ARGV[1]
return redis.call('ZADD', KEYS[1], 'XX', 'CH', now + tonumber(ARGV[3]) + tonumber(ARGV[4]), lease)
