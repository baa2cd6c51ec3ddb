-- Settles entries of the shard's change log that the router ARGV[3] handed out for webhook
-- delivery (see webhook_take.lua), and renews its delivery lease for ARGV[4] ms.
-- ARGV[5] is '' when they were delivered; otherwise why they could not be, and each is
-- first copied to the shard's dead-letter stream `{p}webhook:dead` (its fields, and `seq`
-- its number, `reason`, `at` now in ms; capped like the log). ARGV[6..] are their sequence
-- numbers (none: a renewal only). Entries are acknowledged whoever holds the lease: they
-- were delivered, or given up on, either way.
-- Returns 1 when the router holds the lease (renewed), 0 when it does not (another took
-- it, or it lapsed): the router must take it again before it delivers more.
local consumer, lease_ms, reason = ARGV[3], ARGV[4], ARGV[5]
local lease_key = prefix .. 'webhook:lease'
local dead = prefix .. 'webhook:dead'
local ids = {}
for i = 6, #ARGV do
  local id = ARGV[i] .. '-0'
  ids[#ids + 1] = id
  if reason ~= '' then
    local entry = redis.call('XRANGE', log, id, id)[1]
    if entry then
      local fields = entry[2]
      for _, extra in ipairs({'seq', ARGV[i], 'reason', reason, 'at', tostring(now)}) do
        fields[#fields + 1] = extra
      end
      redis.call('XADD', dead, 'MAXLEN', '~', log_cap, '*', unpack(fields))
    end
  end
end
if #ids > 0 then
  -- No group (the log began a new history since): nothing to acknowledge.
  redis.pcall('XACK', log, 'webhooks', unpack(ids))
end
if redis.call('GET', lease_key) == consumer then
  redis.call('PEXPIRE', lease_key, lease_ms)
  return 1
end
return 0
