-- First, of the routers whose lease lapsed (they stopped, or lost Redis), brings up to
-- ARGV[3] of the scores they wrote ahead back within their real deadlines (see
-- `{p}routers` in the prelude): to the later of the grace after the router was last heard
-- from (or, when this sweep comes late, after its lease before now; never past its last
-- lease and its TTL) and the deadline of the heartbeat that wrote the score (the score
-- less the router's `ahead`). While it held
-- its lease, the router wrote the real deadline of every session due within its grace and
-- took it out of its set, so each score brought back is at most its real deadline: no
-- session ends later than its last heartbeat and the TTL, and none sooner than the grace
-- after the router was last heard from (a client reconnecting to another router meanwhile
-- keeps its user online). Then ends the lapsed leases of up to ARGV[3] sessions (their
-- users go offline when it was their last), then turns up to ARGV[3] users idle for
-- ARGV[4] ms away. ARGV: last_seen_ms, ttl_ms, limit, away_after_ms. Returns {how many
-- were due (the most of the three steps), transitions, failures}.
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
-- Brings back up to `budget` sessions of the router of `entry`, whose lease lapsed at
-- `lapsed`; returns how many it took out of its set.
local function bring_back(entry, lapsed, budget)
  local router, lease_ms, ahead, grace = string.match(entry, '^(.*)\n(%d+)\n(%d+)\n(%d+)$')
  if not router then
    return 0
  end
  local members = redis.call('SPOP', router_set(router), budget)
  local heard = lapsed - tonumber(lease_ms)
  -- Counted from when the router was heard from, or from now less its lease when this
  -- sweep comes late (Redis itself stalled): a stall must not take a fleet offline.
  local from = math.max(heard, now - tonumber(lease_ms))
  ahead, grace = tonumber(ahead), tonumber(grace)
  -- It wrote ahead only while it held its lease, so no real deadline is past its last
  -- lease and its TTL (a third of its ahead): a sweep long after a crash ends its
  -- sessions at once.
  local latest = lapsed + ahead / 3
  for _, member in ipairs(members) do
    local score = tonumber(redis.call('ZSCORE', leases, member))
    if score then
      local until_ = math.max(score - ahead, math.min(score, from + grace, latest))
      if until_ < score then
        redis.call('ZADD', leases, until_, member)
        -- Its last heartbeat was before the router was last heard from, and maybe well
        -- before the score less the lease and the ahead: that is when it was last seen.
        local meta = keys_of(string.match(member, '^(.*)\n') or member)
        if redis.call('HGET', meta, 'mode') ~= 'invisible' then
          local seen = tonumber(redis.call('HGET', meta, 'lastSeen')) or 0
          redis.call('HSET', meta, 'lastSeen', math.max(seen, math.min(heard, now)))
        end
      end
    end
  end
  return #members
end
-- The lapsed routers, oldest first, until `limit` sessions were brought back; a router is
-- dropped once its set is empty (or its entry is not one routers write).
local vouched = 0
local ended = redis.call('ZRANGEBYSCORE', routers, '-inf', now, 'WITHSCORES', 'LIMIT', 0, limit)
for i = 1, #ended, 2 do
  local budget = limit - vouched
  if budget <= 0 then
    break
  end
  local taken = bring_back(ended[i], tonumber(ended[i + 1]), budget)
  vouched = vouched + taken
  if taken < budget then
    redis.call('ZREM', routers, ended[i])
    local router = string.match(ended[i], '^(.*)\n%d+\n%d+\n%d+$')
    if router then
      redis.call('DEL', router_set(router) .. ':writes')
    end
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
return {math.max(#due, #idle, vouched), out, failures}
