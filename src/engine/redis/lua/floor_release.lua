-- Gives a PTT floor back if ARGV[1] still holds it. KEYS[1]: {p}floor:CHANNEL (see
-- floor_take.lua; a plain string when a router of an older version took it).
local kind = redis.call('TYPE', KEYS[1]).ok
if (kind == 'hash' and redis.call('HGET', KEYS[1], 'h') == ARGV[1])
    or (kind == 'string' and redis.call('GET', KEYS[1]) == ARGV[1]) then
  return redis.call('DEL', KEYS[1])
end
return 0
