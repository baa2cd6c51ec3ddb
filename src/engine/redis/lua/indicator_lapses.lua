-- Claims indicators that lapsed past their grace without the router that set them
-- clearing them (it died): up to ARGV[1] members of KEYS[1] ({p}indicator_lapses, member
-- "G\ntype:user"), removed from it and from their group's zset ({p}indicators:G, which
-- lives in the same shard: KEYS[1] minus its name is {p}). ARGV: limit.
-- Atomic: of the routers sweeping at once, exactly one gets each, and announces its end.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, indexed in ipairs(due) do
  redis.call('ZREM', KEYS[1], indexed)
  local group, member = string.match(indexed, '^([^\n]*)\n(.*)$')
  if group then
    redis.call('ZREM', string.sub(KEYS[1], 1, -17) .. 'indicators:' .. group, member)
  end
end
return due
