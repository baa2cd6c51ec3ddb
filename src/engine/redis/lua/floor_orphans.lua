-- Claims the talks whose router is gone: those whose lease lapsed past its grace without
-- their router renewing it (it died), and those of users that just went offline whose
-- lease was not renewed for a while (their router stopped serving them). Up to ARGV[1]
-- members "CHANNEL\nHOLDER" of KEYS[1] ({p}floor_lapses, see floor_take.lua), removed
-- from it and from KEYS[2] ({p}floor_talks); a floor the talk still holds
-- ({p}floor:CHANNEL, in the same shard: KEYS[1] minus its name is {p}) is given back.
-- ARGV: limit, horizon_ms (a lease scored before now + horizon_ms was not renewed for a
-- while), then the users gone offline (none: only lapsed leases are claimed).
-- Returns {channel, holder, talk, held_ms, ...}, talk = "s\nt\nLISTENERS": every talk
-- claimed, whose end nobody announced (its router would have ended the lease, and so
-- would a router taking its floor over), also when its floor lapsed at the maximum talk
-- time first.
-- Atomic: of the routers sweeping at once, exactly one gets each.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local base = string.sub(KEYS[1], 1, -13)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
if #ARGV > 2 then
  local gone = {}
  for i = 3, #ARGV do gone[ARGV[i]] = true end
  local quiet = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, now + tonumber(ARGV[2]))
  for _, lease in ipairs(quiet) do
    local user = string.match(redis.call('HGET', KEYS[2], lease) or '', '^[^\n]*\n([^\n]*)\n')
    if user and gone[user] then due[#due + 1] = lease end
  end
end
local claimed = {}
for _, lease in ipairs(due) do
  redis.call('ZREM', KEYS[1], lease)
  local talk = redis.call('HGET', KEYS[2], lease)
  redis.call('HDEL', KEYS[2], lease)
  local channel, holder = string.match(lease, '^([^\n]*)\n(.*)$')
  local started = talk and string.match(talk, '^([^\n]*)\n')
  if channel and started then
    local key = base .. 'floor:' .. channel
    if redis.call('TYPE', key).ok == 'hash' and redis.call('HGET', key, 'h') == holder then
      redis.call('DEL', key)
    end
    for _, v in ipairs({channel, holder, talk, tostring(now - tonumber(started))}) do
      claimed[#claimed + 1] = v
    end
  end
end
return claimed
