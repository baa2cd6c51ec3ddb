-- Heartbeats of many sessions in one call. ARGV: last_seen_ms, ttl_ms, then six per
-- session: user, session, deviceId, groups, mode, text.
--
-- A live session (the usual heartbeat) takes the short path: its own deadline, the user's
-- earliest deadline in the index and TTL key, lastSeen, and its groups' participant
-- scores. Nothing it changes can alter what others see (its groups change only through a
-- whole lease), so it is never a transition. A lapsed or unknown
-- session (a silent phone back, a re-assert after Redis lost its data) takes the whole
-- `lease`, refused if another live session holds its device now (it was replaced). Returns {index, transition} pairs, index counting sessions from 1.
local ttl = tonumber(ARGV[2])
local deadline = now + ttl
local out = {}
for i = 3, #ARGV, 6 do
  local user, session = ARGV[i], ARGV[i + 1]
  local _, meta, skey = keys_of(user)
  local current = tonumber(redis.call('ZSCORE', skey, session))
  if current and current > now then
    redis.call('ZADD', skey, deadline, session)
    schedule(user, tonumber(redis.call('ZRANGE', skey, 0, 0, 'WITHSCORES')[2]), deadline)
    if redis.call('HGET', meta, 'mode') ~= 'invisible' then
      redis.call('HSET', meta, 'lastSeen', now)
    end
    for group in string.gmatch(ARGV[i + 3], '[^\n]+') do
      local gkey = prefix .. 'group:' .. group
      redis.call('ZADD', gkey, now, user)
      redis.call('PEXPIRE', gkey, last_seen_ms + ttl)
    end
  else
    local row = lease(user, session, ttl, ARGV[i + 2], 'mobile', ARGV[i + 3], '0', ARGV[i + 4], ARGV[i + 5], '0')
    if row then
      out[#out + 1] = {(i - 3) / 6 + 1, row}
    end
  end
end
return out
