-- The shard's transitions after a position: what a dashboard that left at that position
-- missed. ARGV: last_seen_ms, ttl_ms, seq (the last it has), limit (most entries
-- answered). Returns {epoch, head, verdict, rows}: the shard's epoch and last sequence
-- number now (the caller compares the epoch with the position's); verdict 'ok' with every
-- transition after seq up to the head, in order, as rows {user, status, version,
-- lastSeen, deviceId, cause, now, seq, groups, text, lastActivity, activity, groups
-- before}; else
-- why not (rows empty): 'ahead' (a position past the head: not this history's),
-- 'too_old' (entries after it were trimmed, or more than the limit).
-- Atomic: the head and the rows are read at the same instant.
local epoch = history()
local head = tonumber(redis.call('GET', KEYS[1]) or '0')
local from, limit = tonumber(ARGV[3]), tonumber(ARGV[4])
local function verdict(word, rows)
  return {epoch, tostring(head), word, rows or {}}
end
if from > head then
  return verdict('ahead')
end
if from == head then
  return verdict('ok')
end
if head - from > limit then
  return verdict('too_old')
end
local entries = redis.call('XRANGE', log, (from + 1) .. '-0', '+')
if #entries ~= head - from then
  return verdict('too_old')
end
local order = {u = 1, s = 2, v = 3, l = 4, d = 5, c = 6, t = 7, g = 9, x = 10, a = 11, y = 12, pg = 13}
local rows = {}
for _, entry in ipairs(entries) do
  local row = {false, false, false, false, false, false, false, string.match(entry[1], '^(%d+)'), false, false, false,
    false, false}
  local fields = entry[2]
  for i = 1, #fields, 2 do
    local at = order[fields[i]]
    if at then
      row[at] = fields[i + 1]
    end
  end
  rows[#rows + 1] = row
end
return verdict('ok', rows)
