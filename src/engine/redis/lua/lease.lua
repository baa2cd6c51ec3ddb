-- connect. ARGV: prefix, last_seen_ms, user, session, ttl_ms, deviceId, role, groups,
-- activity, mode, text (see `lease` in the prelude).
return lease(ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11])
