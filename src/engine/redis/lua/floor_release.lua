-- Gives a PTT floor back if ARGV[1] still holds it. KEYS[1]: {p}floor:CHANNEL.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
