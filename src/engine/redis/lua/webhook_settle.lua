-- Settles entries of the shard's change log that the router ARGV[3] handed out for webhook
-- delivery (see webhook_take.lua), and renews its delivery lease for ARGV[4] ms.
-- ARGV[5] is how many entries, n (0: a renewal only), and ARGV[6..5+n] their sequence
-- numbers. When they were given up on, ARGV[6+n] is why, and ARGV[7+n..6+2n] each one's
-- webhook event (JSON): each is added to the shard's dead-letter stream `{p}webhook:dead`
-- (fields: seq, event, reason, at: now in ms; capped like the log). Entries are
-- acknowledged whoever holds the lease: they were delivered, or given up on, either way.
-- Returns 1 when the router holds the lease (renewed), 0 when it does not (another took
-- it, or it lapsed): the router must take it again before it delivers more. A lease of 0
-- ms gives it up (PEXPIRE 0 deletes the key).
local consumer, lease_ms, n = ARGV[3], ARGV[4], tonumber(ARGV[5])
local lease_key = prefix .. 'webhook:lease'
local ids = {}
for i = 1, n do
  ids[i] = ARGV[5 + i] .. '-0'
end
local reason = ARGV[6 + n]
if reason then
  for i = 1, n do
    redis.call('XADD', prefix .. 'webhook:dead', 'MAXLEN', '~', log_cap, '*', 'seq', ARGV[5 + i], 'event',
      ARGV[6 + n + i], 'reason', reason, 'at', tostring(now))
  end
end
if n > 0 then
  -- No group (the log began a new history since): nothing to acknowledge.
  redis.pcall('XACK', log, 'webhooks', unpack(ids))
end
if redis.call('GET', lease_key) == consumer then
  redis.call('PEXPIRE', lease_key, lease_ms)
  return 1
end
return 0
