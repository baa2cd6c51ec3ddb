-- Reads users' presence within a reader's scope. ARGV: last_seen_ms, ttl_ms, the reader's
-- own user id ('' for none), the number n of groups it reads (-1: everyone), those n
-- groups, then the user ids. Returns one entry per user id: its meta fields (status,
-- lastSeen, deviceId, version, groups, text, lastActivity, activity) when the user is known and
-- within the scope, else false. A user shown online was last seen at its latest
-- heartbeat: its sessions' latest lease deadline less the lease.
--
-- Out-of-scope and unknown users get the same reply, and as nearly as possible the same
-- work, so that timing the answer tells no more than reading it: with up to
-- INDEXED_SCOPE groups, the scope is first checked against the group indexes, where
-- both miss alike; only users found there (members within the last-seen retention, whom
-- the reader could read then) have their own fields read. With more groups, only the
-- user's groups field is read before the scope is known.
local INDEXED_SCOPE = 8
local own = ARGV[3]
local n = tonumber(ARGV[4])
local allowed = nil
if n >= 0 then
  allowed = {}
  for i = 5, 4 + n do
    allowed[ARGV[i]] = true
  end
end

local function listed(user)
  if n > INDEXED_SCOPE then
    return true
  end
  for i = 5, 4 + n do
    if redis.call('ZSCORE', prefix .. 'group:' .. ARGV[i], user) then
      return true
    end
  end
  return false
end

local function readable(user, meta)
  if allowed == nil or user == own then
    return true
  end
  if not listed(user) then
    return false
  end
  for group in string.gmatch(redis.call('HGET', meta, 'groups') or '', '[^\n]+') do
    if allowed[group] then
      return true
    end
  end
  return false
end

local rows = {}
for i = 5 + math.max(n, 0), #ARGV do
  local user = ARGV[i]
  local meta = keys_of(user)
  local m = readable(user, meta)
    and redis.call('HMGET', meta, 'status', 'lastSeen', 'deviceId', 'version', 'groups', 'text', 'lastActivity',
      'activity')
  if m and m[1] and m[1] ~= 'offline' then
    m[2] = last_heartbeat(user) or m[2]
  end
  rows[#rows + 1] = (m and m[4]) and m or false
end
return rows
