-- Router shutdown: shorten a session's lease to `grace`, never lengthen it.
-- ARGV: prefix, last_seen_ms, user, session, grace_ms.
local user, session = ARGV[3], ARGV[4]
local _, _, skey = keys_of(user)
redis.call('ZADD', skey, 'XX', 'LT', now + tonumber(ARGV[5]), session)
settle(user)
return nil
