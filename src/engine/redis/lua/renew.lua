-- Heartbeats of sessions whose lease could not simply be extended (renewals.rs extends a
-- live session's lease with one ZADD XX): a lapsed or unknown session (a silent phone
-- back, a re-assert after Redis lost its data) takes the whole `lease`, refused if another
-- live session holds its device now (it was replaced). ARGV: last_seen_ms, ttl_ms, then
-- seven per session: user, session, deviceId, groups, mode, text, activity. Returns {index,
-- transition} pairs, index counting sessions from 1.
local out = {}
for i = 3, #ARGV, 7 do
  local row = lease(ARGV[i], ARGV[i + 1], ARGV[i + 2], 'mobile', ARGV[i + 3], '0', ARGV[i + 4], ARGV[i + 5], '0',
    ARGV[i + 6])
  if row then
    out[#out + 1] = {(i - 3) / 7 + 1, row}
  end
end
return out
