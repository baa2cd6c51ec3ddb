-- The user chose a status. ARGV: prefix, last_seen_ms, user, session, mode
-- (online/away/dnd/invisible), text ('' = none). Setting a status is activity.
local user, text = ARGV[3], ARGV[6]
local _, meta = keys_of(user)
local old = redis.call('HGET', meta, 'text') or ''
redis.call('HSET', meta, 'mode', ARGV[5], 'lastActivity', now)
redis.call('HDEL', meta, 'idle')
if text == '' then
  redis.call('HDEL', meta, 'text')
else
  redis.call('HSET', meta, 'text', text)
end
local _, regrouped = settle(user)
if regrouped then
  return transition(user, 'status', true, 'groups')
end
return transition(user, 'status', old ~= text)
