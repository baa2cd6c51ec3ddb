-- Ends the lapsed leases of up to ARGV[3] sessions (their users go offline when it was
-- their last), then turns up to ARGV[3] users idle for ARGV[4] ms away. ARGV:
-- last_seen_ms, ttl_ms, limit, away_after_ms. Returns {how many were due, transitions,
-- failures}.
-- Atomic: each transition is claimed by exactly one of the routers sweeping at once.
-- A user whose keys cannot be read as the scripts keep them (another type, written by
-- something else under the prefix) fails alone: its failure is returned and its lapsed
-- leases leave the queue, so the sweep goes on for everyone else.
local limit = tonumber(ARGV[3])
local out, failures = {}, {}
local function each(user, step)
  local ok, row = pcall(step)
  if not ok then
    failures[#failures + 1] = user .. ': ' .. tostring(type(row) == 'table' and row.err or row)
  elseif row then
    out[#out + 1] = row
  end
end
local due = redis.call('ZRANGEBYSCORE', leases, '-inf', now, 'LIMIT', 0, limit)
local settled = {}
for _, member in ipairs(due) do
  local user = string.match(member, '^(.*)\n') or member
  if not settled[user] then
    settled[user] = true
    each(user, function()
      -- A user left with live sessions changes only if the lapsed ones took groups away.
      local _, regrouped = settle(user)
      return transition(user, 'expired', regrouped, 'groups')
    end)
  end
  -- A lease whose user no longer lists it (or whose user failed) goes too.
  redis.call('ZREM', leases, member)
end
local idle = redis.call('ZRANGEBYSCORE', active, '-inf', now - tonumber(ARGV[4]), 'LIMIT', 0, limit)
for _, user in ipairs(idle) do
  each(user, function()
    local meta = keys_of(user)
    redis.call('HSET', meta, 'idle', '1')
    return transition(user, 'idle')
  end)
  -- Never taken again unless its activity puts it back.
  redis.call('ZREM', active, user)
end
return {math.max(#due, #idle), out, failures}
