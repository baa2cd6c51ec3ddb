-- Redis' clock in Unix ms, read on the master of KEYS[1]'s slot (the shard's sequence key,
-- not otherwise touched): the clock that shard's scripts use.
local t = redis.call('TIME')
return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
