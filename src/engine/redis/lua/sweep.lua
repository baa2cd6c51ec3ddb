-- Ends lapsed leases of up to ARGV[2] due users (due at their earliest lease's deadline),
-- then turns up to ARGV[2] users idle for ARGV[3] ms away. ARGV: last_seen_ms,
-- limit, away_after_ms.
-- Atomic: each transition is claimed by exactly one of the routers sweeping at once.
local limit = tonumber(ARGV[2])
local due = redis.call('ZRANGEBYSCORE', deadlines, '-inf', now, 'LIMIT', 0, limit)
local out = {}
for _, user in ipairs(due) do
  -- A user left with live sessions changes only if the lapsed ones took groups away.
  local _, regrouped = settle(user)
  local row = transition(user, 'expired', regrouped, 'groups')
  if row then
    out[#out + 1] = row
  end
end
local idle = redis.call('ZRANGEBYSCORE', active, '-inf', now - tonumber(ARGV[3]), 'LIMIT', 0, limit)
for _, user in ipairs(idle) do
  local _, meta = keys_of(user)
  redis.call('HSET', meta, 'idle', '1')
  local row = transition(user, 'idle')
  if row then
    out[#out + 1] = row
  end
end
return {math.max(#due, #idle), out}
