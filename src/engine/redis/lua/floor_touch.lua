-- The holder of a PTT floor sent AUDIO: the floor goes idle ARGV[2] ms from now.
-- KEYS[1]: {p}floor:CHANNEL (see floor_take.lua). ARGV: holder, idle_ms. Nothing when
-- another session holds it now, or nobody.
if redis.call('TYPE', KEYS[1]).ok == 'hash' and redis.call('HGET', KEYS[1], 'h') == ARGV[1] then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('HSET', KEYS[1], 'i', now + tonumber(ARGV[2]))
  return 1
end
return 0
