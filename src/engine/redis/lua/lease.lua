-- A new session (replace '1'), or a live one whose groups changed (replace '0'). ARGV:
-- last_seen_ms, ttl_ms, replace, then the session as renew.lua takes one: user, session,
-- deviceId, groups, mode, text, activity (see `lease` in the prelude). Counts as activity.
-- Returns {transition or nil, the replaced session or nil}.
local row, replaced = lease(ARGV[4], ARGV[5], ARGV[6], 'mobile', ARGV[7], '1', ARGV[8], ARGV[9], ARGV[3], ARGV[10])
return {row or false, replaced or false}
