-- Extends live sessions' leases (renewals.rs): `ZADD XX GT CH` of each deadline, written
-- ARGV[2] ms ahead of it while this router holds its lease and the session is in its set
-- (see `{p}leases` and `{p}routers` in prelude.lua), the deadline itself otherwise.
-- KEYS: the shard's {p}routers, {p}leases, {p}router:R and {p}router:R:writes. ARGV: the router's entry in
-- {p}routers, ahead_ms, exact_within_ms, how many of the sessions are new to {p}router:R
-- (the first ones: added to it), then deadline (Unix ms) and member pairs.
-- Only existing leases move (XX): a lease that was ended is not brought back here, nor
-- added to the set. A session taken out of the set since (its router shut down and wrote
-- its deadline, or lost its lease) is not written ahead. Nor is one due within
-- exact_within_ms of the lease's score (within the grace after the router was last heard
-- from): the sweep would bring it back past its deadline. When the router's lease lapsed,
-- a session still in its set (its score ahead, not yet brought back by the sweep) leaves
-- the set and takes its deadline as it is, lower or not: this heartbeat is later than any
-- the score was written for, so the sweep must not bring it back below it.
-- Every call that writes ahead counts itself in {p}router:R:writes, so that the router
-- notices writes Redis lost (a failover to a replica behind, a restart from an older copy)
-- at its next renewal. Returns {how many leases moved, 1 when the lease was held, the
-- members written as their deadline although this router holds its lease, the count}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]))
local held = lease ~= nil and lease > now
local ahead, exact_before, new = tonumber(ARGV[2]), (lease or 0) + tonumber(ARGV[3]), tonumber(ARGV[4])
local members = {}
for i = 6, #ARGV, 2 do
  members[#members + 1] = ARGV[i]
end
-- Per member, whether it is in the set (for a held lease, the known ones are asked; for a
-- lapsed one, all), and whether a new one has a lease to write.
local listed, exists = {}, {}
local first = held and new + 1 or 1
if first <= #members then
  listed = redis.call('SMISMEMBER', KEYS[3], unpack(members, first))
end
if held and new > 0 then
  exists = redis.call('ZMSCORE', KEYS[2], unpack(members, 1, new))
end
local raised, exact, added, unlisted = {}, {}, {}, {}
for pair, member in ipairs(members) do
  local deadline = tonumber(ARGV[3 + 2 * pair])
  -- Asked only past `first`: nil before it.
  local known = listed[pair - first + 1] == 1
  local vouched
  if pair <= new then
    vouched = held and exists[pair] ~= false and deadline > exact_before
  else
    vouched = held and known and deadline > exact_before
  end
  if vouched then
    raised[#raised + 1] = deadline + ahead
    raised[#raised + 1] = member
    if pair <= new then
      added[#added + 1] = member
    end
  elseif known then
    -- Listed, and no longer to be written ahead: out of the set, and its deadline as it is.
    exact[#exact + 1] = deadline
    exact[#exact + 1] = member
  else
    raised[#raised + 1] = deadline
    raised[#raised + 1] = member
  end
  if held and not vouched then
    unlisted[#unlisted + 1] = member
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
local count = 0
if held and #raised + #exact > 0 then
  count = redis.call('INCR', KEYS[4])
end
return {moved, held and 1 or 0, unlisted, count}
