-- Ends lapsed leases of up to ARGV[2] due users. ARGV: prefix, limit.
-- Atomic: a user's offline is claimed by exactly one of the routers sweeping at once.
local due = redis.call('ZRANGEBYSCORE', deadlines, '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
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
