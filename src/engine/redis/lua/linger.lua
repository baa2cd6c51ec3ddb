-- Router shutdown: shorten a session's lease to `grace`, never lengthen it, and give up its
-- device (its connection is gone: a reconnect of the device replaces nothing).
-- ARGV: last_seen_ms, ttl_ms, user, session, grace_ms. Sessions of the user that lapsed
-- already are left to the sweep, which announces what their end changes.
local user, session = ARGV[3], ARGV[4]
local meta = keys_of(user)
if redis.call('ZADD', leases, 'XX', 'LT', 'CH', now + tonumber(ARGV[5]), lease_of(user, session)) == 1
  and redis.call('HGET', meta, 'mode') ~= 'invisible' then
  -- Its connection closed now: the shortened deadline no longer tells its last heartbeat.
  redis.call('HSET', meta, 'lastSeen', now)
end
-- Its deadline is written: its router no longer vouches for it.
redis.call('SREM', router_sessions(session), lease_of(user, session))
release_devices(user, function(holder)
  return holder ~= session
end)
return nil
