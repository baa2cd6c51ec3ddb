-- A session closed. ARGV: prefix, last_seen_ms, user, session.
local user, session = ARGV[3], ARGV[4]
local _, _, skey = keys_of(user)
if redis.call('ZREM', skey, session) == 0 then
  return nil -- already swept or never registered
end
if settle(user) > 0 then
  return nil -- another device is still online
end
return transition(user, 'disconnect')
