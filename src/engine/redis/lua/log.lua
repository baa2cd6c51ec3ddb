-- The shard's transitions after a position: what a dashboard that left at that position
-- missed, or what a router's subscription never delivered. ARGV: last_seen_ms, ttl_ms, seq
-- (the last it has), limit (most entries a gap may span), through (the last wanted; '' for
-- the head) and page (most rows answered: the caller reads a long gap page by page, so
-- that no call keeps Redis busy for long). Returns {epoch, head, verdict, rows}: the
-- shard's epoch and last sequence number now (the caller compares the epoch with the
-- position's); verdict 'ok' with the transitions after seq, in order, up to through or
-- `page` of them, as rows {user, status, version, lastSeen, deviceId, cause, now, seq,
-- groups, text, lastActivity, activity, groups before}; else why not (rows empty): 'ahead' (a
-- position, or through, past the head: not this history's), 'too_old' (entries after it
-- were trimmed, or more than the limit).
-- Atomic: the head and the rows are read at the same instant.
local epoch = history()
local head = tonumber(redis.call('GET', KEYS[1]) or '0')
local from, limit = tonumber(ARGV[3]), tonumber(ARGV[4])
local through = tonumber(ARGV[5]) or head
local page = tonumber(ARGV[6])
local function verdict(word, rows)
  return {epoch, tostring(head), word, rows or {}}
end
if from > head or through > head then
  return verdict('ahead')
end
if from >= through then
  return verdict('ok')
end
if through - from > limit then
  return verdict('too_old')
end
local last = math.min(through, from + page)
local entries = redis.call('XRANGE', log, (from + 1) .. '-0', last .. '-0')
if #entries ~= last - from then
  return verdict('too_old')
end
local rows = {}
for _, entry in ipairs(entries) do
  rows[#rows + 1] = row_of(entry)
end
return verdict('ok', rows)
