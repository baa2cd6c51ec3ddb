-- The user chose a status. ARGV: last_seen_ms, ttl_ms, user, session, mode
-- (online/away/dnd/invisible), text ('' = none), deviceId of the session ('' = none),
-- '1' when set from no session of the user (the HTTP API): then only while the user has
-- a live session, else nothing is written and {'not_online'} is returned; and the
-- activity: '=' keeps it, '' clears it, `type\nname` sets it (its start kept when type and
-- name are unchanged, else now).
-- Setting a status is activity.
local user, mode, text = ARGV[3], ARGV[5], ARGV[6]
local meta, skey = keys_of(user)
if ARGV[8] == '1' then
  local live = false
  for _, session in ipairs(redis.call('SMEMBERS', skey)) do
    if (deadline(user, session) or 0) > now then
      live = true
    end
  end
  if not live then
    return {'not_online'}
  end
end
local old = redis.call('HGET', meta, 'text') or ''
local old_activity = redis.call('HGET', meta, 'activity') or ''
local activity = old_activity
local change = ARGV[9] or '='
if change == '' then
  activity = ''
elseif change ~= '=' then
  local kind, name = string.match(change, '^([^\n]*)\n(.*)$')
  local was_kind, was_name = string.match(old_activity, '^([^\n]*)\n[^\n]*\n(.*)$')
  if not (was_kind == kind and was_name == name) then
    activity = kind .. '\n' .. string.format('%d', now) .. '\n' .. name
  end
end
if activity == '' then
  redis.call('HDEL', meta, 'activity')
else
  redis.call('HSET', meta, 'activity', activity)
end
local was_invisible = redis.call('HGET', meta, 'mode') == 'invisible'
redis.call('HSET', meta, 'mode', mode, 'lastActivity', now)
redis.call('HDEL', meta, 'idle')
if text == '' then
  redis.call('HDEL', meta, 'text')
else
  redis.call('HSET', meta, 'text', text)
end
local _, regrouped = settle(user)
-- Seen again after being invisible: from now and on this device, not as it was when it
-- went invisible.
if was_invisible and mode ~= 'invisible' and redis.call('EXISTS', skey) == 1 then
  seen_on(meta, ARGV[7])
end
if regrouped then
  return transition(user, 'status', true, 'groups')
end
return transition(user, 'status', old ~= text or old_activity ~= activity)
