-- connect / heartbeat. ARGV: prefix, user, session, ttl_ms, deviceId ('' = keep), role,
-- groups (newline-separated; ids hold no control characters).
-- A heartbeat on a session that already lapsed registers it again.
local user, session, ttl = ARGV[2], ARGV[3], tonumber(ARGV[4])
local _, meta, skey = keys_of(user)
redis.call('ZADD', skey, now + ttl, session)
settle(user)
redis.call('HSET', meta, 'lastSeen', now, 'role', ARGV[6], 'groups', ARGV[7])
if ARGV[5] ~= '' then
  redis.call('HSET', meta, 'deviceId', ARGV[5])
end
return transition(user, 'online', 'connect')
