-- Ends lapsed leases of up to ARGV[3] due users, then turns up to ARGV[3] users idle for
-- ARGV[4] ms away. ARGV: prefix, last_seen_ms, limit, away_after_ms.
-- Atomic: each transition is claimed by exactly one of the routers sweeping at once.
local limit = tonumber(ARGV[3])
local due = redis.call('ZRANGEBYSCORE', deadlines, '-inf', now, 'LIMIT', 0, limit)
local out = {}
for _, user in ipairs(due) do
  if settle(user) == 0 then
    local row = transition(user, 'expired')
    if row then
      out[#out + 1] = row
    end
  end
end
local idle = redis.call('ZRANGEBYSCORE', active, '-inf', now - tonumber(ARGV[4]), 'LIMIT', 0, limit)
for _, user in ipairs(idle) do
  local _, meta = keys_of(user)
  redis.call('HSET', meta, 'idle', '1')
  local row = transition(user, 'idle')
  if row then
    out[#out + 1] = row
  end
end
return {math.max(#due, #idle), out}
