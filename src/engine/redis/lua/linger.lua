-- Router shutdown: shorten a session's lease to `grace`, never lengthen it.
-- ARGV: prefix, user, session, grace_ms.
local user, session = ARGV[2], ARGV[3]
local _, _, skey = keys_of(user)
redis.call('ZADD', skey, 'XX', 'LT', now + tonumber(ARGV[4]), session)
settle(user)
return nil
