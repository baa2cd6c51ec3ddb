-- Activity of a connected user: resets its away timer, and brings it back from idle.
-- ARGV: last_seen_ms, ttl_ms, user.
local user = ARGV[3]
local meta, skey = keys_of(user)
if redis.call('EXISTS', skey) == 0 then
  return nil
end
redis.call('HSET', meta, 'lastActivity', now)
redis.call('HDEL', meta, 'idle')
return transition(user, 'active')
