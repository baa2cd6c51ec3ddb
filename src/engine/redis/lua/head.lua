-- The shard's epoch and last transition number: where its change log stands now; and the
-- number after which the log still holds every transition (its first entry's, less one;
-- the head when it is empty). ARGV: last_seen_ms, ttl_ms.
local epoch = history()
local head = redis.call('GET', KEYS[1]) or '0'
local first = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)[1]
local kept = head
if first then
  kept = tostring(tonumber(string.match(first[1], '^(%d+)')) - 1)
end
return {epoch, head, kept}
