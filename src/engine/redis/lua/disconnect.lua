-- A session closed. ARGV: last_seen_ms, ttl_ms, user, session.
local user, session = ARGV[3], ARGV[4]
local _, skey = keys_of(user)
if redis.call('SISMEMBER', skey, session) == 0 then
  return nil -- already swept or never registered
end
set_lease(user, session, nil)
local live, regrouped = settle(user)
if live > 0 then
  -- Another device is still online: news only if this one's groups were its alone.
  return transition(user, 'disconnect', regrouped, 'groups')
end
return transition(user, 'disconnect')
