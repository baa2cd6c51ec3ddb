-- Router shutdown: shorten a session's lease to `grace`, never lengthen it, and give up its
-- device (its connection is gone: a reconnect of the device replaces nothing).
-- ARGV: last_seen_ms, user, session, grace_ms. Sessions of the user that lapsed
-- already are left to the sweep, which announces what their end changes.
local user, session = ARGV[2], ARGV[3]
local _, _, skey = keys_of(user)
if redis.call('ZADD', skey, 'XX', 'LT', 'CH', now + tonumber(ARGV[4]), session) == 1 then
  local first = redis.call('ZRANGE', skey, 0, 0, 'WITHSCORES')
  local last = redis.call('ZRANGE', skey, -1, -1, 'WITHSCORES')
  schedule(user, tonumber(first[2]), tonumber(last[2]))
end
release_devices(user, function(holder)
  return holder ~= session
end)
return nil
