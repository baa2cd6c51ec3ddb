-- connect. ARGV: prefix, last_seen_ms, ttl_ms, then the session as renew.lua takes one:
-- user, session, deviceId, groups, mode, text (see `lease` in the prelude). A connect is
-- activity.
return lease(ARGV[4], ARGV[5], tonumber(ARGV[3]), ARGV[6], 'mobile', ARGV[7], '1', ARGV[8], ARGV[9])
