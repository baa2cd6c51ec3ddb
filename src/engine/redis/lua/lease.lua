-- A new session (replace '1'), or a live one whose groups changed (replace '0'). ARGV:
-- prefix, last_seen_ms, ttl_ms, replace, then the session as renew.lua takes one: user,
-- session, deviceId, groups, mode, text (see `lease` in the prelude). Counts as activity.
-- Returns {transition or nil, the replaced session or nil}.
local row, replaced = lease(ARGV[5], ARGV[6], tonumber(ARGV[3]), ARGV[7], 'mobile', ARGV[8], '1', ARGV[9], ARGV[10],
  ARGV[4])
return {row or false, replaced or false}
