-- Ends the lapsed leases of up to ARGV[3] sessions (their users go offline when it was
-- their last), then turns up to ARGV[3] users idle for ARGV[4] ms away. ARGV:
-- last_seen_ms, ttl_ms, limit, away_after_ms.
-- Atomic: each transition is claimed by exactly one of the routers sweeping at once.
local limit = tonumber(ARGV[3])
local due = redis.call('ZRANGEBYSCORE', leases, '-inf', now, 'LIMIT', 0, limit)
local out, settled = {}, {}
for _, member in ipairs(due) do
  local user = string.match(member, '^(.*)\n') or member
  if not settled[user] then
    settled[user] = true
    -- A user left with live sessions changes only if the lapsed ones took groups away.
    local _, regrouped = settle(user)
    local row = transition(user, 'expired', regrouped, 'groups')
    if row then
      out[#out + 1] = row
    end
  end
  -- A lease whose user no longer lists it (left over by an older version) goes too.
  redis.call('ZREM', leases, member)
end
local idle = redis.call('ZRANGEBYSCORE', active, '-inf', now - tonumber(ARGV[4]), 'LIMIT', 0, limit)
for _, user in ipairs(idle) do
  local meta = keys_of(user)
  redis.call('HSET', meta, 'idle', '1')
  local row = transition(user, 'idle')
  if row then
    out[#out + 1] = row
  end
end
return {math.max(#due, #idle), out}
