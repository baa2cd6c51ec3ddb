-- connect / heartbeat. ARGV: prefix, last_seen_ms, user, session, ttl_ms, deviceId ('' = keep),
-- role, groups (newline-separated; ids hold no control characters), activity ("1" on
-- connect: resets the away timer; a heartbeat is not activity, phones send them unattended),
-- mode and text the session chose ('' = none): restored only if Redis lost the user's mode.
-- A heartbeat on a session that already lapsed registers it again.
local user, session, ttl = ARGV[3], ARGV[4], tonumber(ARGV[5])
local _, meta, skey = keys_of(user)
if ARGV[10] ~= '' and redis.call('HEXISTS', meta, 'mode') == 0 then
  redis.call('HSET', meta, 'mode', ARGV[10])
  if ARGV[11] ~= '' then
    redis.call('HSET', meta, 'text', ARGV[11])
  end
end
redis.call('ZADD', skey, now + ttl, session)
settle(user)
redis.call('HSET', meta, 'role', ARGV[7], 'groups', ARGV[8])
-- An invisible user's heartbeats must not reveal it through lastSeen.
if redis.call('HGET', meta, 'mode') ~= 'invisible' then
  redis.call('HSET', meta, 'lastSeen', now)
end
if ARGV[6] ~= '' then
  redis.call('HSET', meta, 'deviceId', ARGV[6])
end
if ARGV[9] == '1' then
  redis.call('HSET', meta, 'lastActivity', now)
  redis.call('HDEL', meta, 'idle')
end
for group in string.gmatch(ARGV[8], '[^\n]+') do
  local gkey = prefix .. 'group:' .. group
  redis.call('ZADD', gkey, now, user)
  redis.call('ZREMRANGEBYSCORE', gkey, '-inf', now - last_seen_ms - ttl)
  redis.call('PEXPIRE', gkey, last_seen_ms + ttl)
end
return transition(user, 'connect')
