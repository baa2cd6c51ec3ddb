-- Router shutdown: shorten a session's lease to `grace`, never lengthen it, and give up its
-- device (its connection is gone: a reconnect of the device replaces nothing).
-- ARGV: last_seen_ms, ttl_ms, user, session, grace_ms. Sessions of the user that lapsed
-- already are left to the sweep, which announces what their end changes.
local user, session = ARGV[3], ARGV[4]
redis.call('ZADD', leases, 'XX', 'LT', now + tonumber(ARGV[5]), lease_of(user, session))
release_devices(user, function(holder)
  return holder ~= session
end)
return nil
