-- Ends lapsed leases of up to ARGV[3] due users. ARGV: prefix, last_seen_ms, limit.
-- Atomic: a user's offline is claimed by exactly one of the routers sweeping at once.
local due = redis.call('ZRANGEBYSCORE', deadlines, '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, user in ipairs(due) do
  if settle(user) == 0 then
    local row = transition(user, 'offline', 'expired')
    if row then
      out[#out + 1] = row
    end
  end
end
return {#due, out}
