-- A session closed. ARGV: last_seen_ms, user, session.
local user, session = ARGV[2], ARGV[3]
local _, _, skey = keys_of(user)
if redis.call('ZREM', skey, session) == 0 then
  return nil -- already swept or never registered
end
local live, regrouped = settle(user)
if live > 0 then
  -- Another device is still online: news only if this one's groups were its alone.
  return transition(user, 'disconnect', regrouped, 'groups')
end
return transition(user, 'disconnect')
