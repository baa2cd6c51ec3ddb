-- The shard's transitions after a position: what a dashboard that left at that position
-- missed. ARGV: last_seen_ms, ttl_ms, seq (the last it has), limit (most entries
-- answered). Returns {epoch, head, verdict, rows}: the shard's epoch and last sequence
-- number now (the caller compares the epoch with the position's); verdict 'ok' with every
-- transition after seq up to the head, in order, as rows {user, status, version,
-- lastSeen, deviceId, cause, now, seq, groups, text, lastActivity, groups before}; else
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
local rows = {}
for _, entry in ipairs(entries) do
  rows[#rows + 1] = row_of(entry)
end
return verdict('ok', rows)
