-- Extends live sessions' leases (renewals.rs): `ZADD XX GT CH` of each deadline, written
-- ARGV[2] ms ahead of it while this router holds its lease and the session is in its set
-- (see `{p}leases` and `{p}routers` in prelude.lua), the deadline itself otherwise.
-- KEYS: the shard's {p}routers, {p}leases and {p}router:R. ARGV: the router's entry in
-- {p}routers, ahead_ms, how many of the sessions are new to {p}router:R (the first ones:
-- added to it), then deadline (Unix ms) and member pairs. Only existing leases move (XX):
-- a lease that was ended is not brought back here. A session taken out of the set since
-- (its router shut down and wrote its deadline, or lost its lease) is not written ahead.
-- When the router's lease lapsed, a session still in its set (its score ahead, not yet
-- brought back by the sweep) leaves the set and takes its deadline as it is, lower or
-- not: this heartbeat is later than any the score was written for, so the sweep must not
-- bring it back below it.
-- Returns {how many leases moved, 1 when the lease was held, the members written as their
-- deadline although not new}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]))
local held = lease ~= nil and lease > now
local ahead, new = tonumber(ARGV[2]), tonumber(ARGV[3])
local members = {}
for i = 5, #ARGV, 2 do
  members[#members + 1] = ARGV[i]
end
-- Per member, whether it is in the set: for a held lease, those not new are asked; for a
-- lapsed one, all.
local listed = {}
local first = held and new + 1 or 1
if first <= #members then
  listed = redis.call('SMISMEMBER', KEYS[3], unpack(members, first))
end
local raised, exact, added, unlisted = {}, {}, {}, {}
for pair, member in ipairs(members) do
  local deadline = tonumber(ARGV[2 + 2 * pair])
  local known = listed[pair - first + 1] == 1
  if held and (pair <= new or known) then
    raised[#raised + 1] = deadline + ahead
    raised[#raised + 1] = member
    if pair <= new then
      added[#added + 1] = member
    end
  elseif not held and known then
    exact[#exact + 1] = deadline
    exact[#exact + 1] = member
  else
    raised[#raised + 1] = deadline
    raised[#raised + 1] = member
    if held then
      unlisted[#unlisted + 1] = member
    end
  end
end
if #added > 0 then
  redis.call('SADD', KEYS[3], unpack(added))
end
local moved = 0
if #exact > 0 then
  local gone = {}
  for i = 2, #exact, 2 do
    gone[#gone + 1] = exact[i]
  end
  redis.call('SREM', KEYS[3], unpack(gone))
  moved = moved + redis.call('ZADD', KEYS[2], 'XX', 'CH', unpack(exact))
end
if #raised > 0 then
  moved = moved + redis.call('ZADD', KEYS[2], 'XX', 'GT', 'CH', unpack(raised))
end
return {moved, held and 1 or 0, unlisted}
