-- Claims a PTT floor. KEYS[1]: {p}floor:CHANNEL. ARGV: holder (session id), hold_ms.
-- Granted when free or already the holder's; the key lapses on its own if the holder's
-- router dies, so a crashed router never keeps a group busy past the maximum talk time.
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2]))
return 1
