-- The shard's sequence went back: Redis came back with an older copy of its data (a
-- restart from an earlier snapshot, a replica that had not caught up taking over), or
-- empty, and the numbers after its head would be given again to other transitions.
-- Positions of the history before must not be resumed against those: the shard gets a new
-- epoch, and its sequence moves to the highest number given before, so none is given
-- twice. The log keeps its entries (the webhooks' outbox may still owe them): they are
-- numbered at or below that number, and no position of the new history reads that far
-- back. ARGV: last_seen_ms, ttl_ms, seen (the highest number a router received). Returns 1
-- when it did so, 0 when the sequence is no longer behind (another router noticed first).
local seen = tonumber(ARGV[3])
history()
local head = tonumber(redis.call('GET', KEYS[1]) or '0')
if head >= seen then
  return 0
end
redis.call('SET', prefix .. 'epoch', new_epoch())
redis.call('SET', KEYS[1], seen)
-- The numbers skipped (after `head`, through `seen`) never had an entry: the webhooks'
-- delivery must not count them as entries trimmed before delivery.
redis.call('SET', prefix .. 'skipped', head .. ' ' .. seen)
return 1
