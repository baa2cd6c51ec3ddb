-- The shard's sequence went back: Redis came back with an older copy of its data (a
-- restart from an earlier snapshot, a replica that had not caught up taking over), and
-- the numbers after its head would be given again to other transitions. Positions of the
-- history before must not be resumed against those: the shard starts a new history (a new
-- epoch, an empty log) with its sequence at the highest number given before, so none is
-- given twice. ARGV: last_seen_ms, ttl_ms, seen (the highest number a router received).
-- Returns 1 when it started one, 0 when the sequence is no longer behind (another router
-- noticed first).
local seen = tonumber(ARGV[3])
if tonumber(redis.call('GET', KEYS[1]) or '0') >= seen then
  return 0
end
redis.call('DEL', prefix .. 'epoch')
redis.call('SET', KEYS[1], seen)
history()
return 1
