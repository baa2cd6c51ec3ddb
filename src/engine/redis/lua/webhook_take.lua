-- The next entries of the shard's change log (the webhook outbox) for the router ARGV[3]
-- to deliver, at most ARGV[4], and the shard's delivery lease for ARGV[5] ms.
--
-- The log's consumer group `webhooks` records what was handed out (its last-delivered id)
-- and what is handed out and not yet settled (its pending entries). One router at a time
-- holds the shard's lease, `{p}webhook:lease` (its value: the holder), and only the holder
-- reads: so the shard's entries are delivered one batch at a time, in log order, and each
-- user's (whose transitions all go to its shard's log) in version order. A router that
-- takes the lease (its holder died or stalled past the lease) first claims every entry
-- handed to another consumer and not settled (XAUTOCLAIM), and hands those out again
-- before any new one.
--
-- Returns {verdict, lost, rows}: 'busy' when another router holds the lease (nothing
-- read); else 'ok' with this router's pending entries (handed out before, not settled),
-- then new ones up to the count, in log order, as rows (`row_of`). `lost` counts entries
-- trimmed from the log (its cap) before they were delivered: they are settled here, as
-- nobody can deliver them any more.
-- The group is made (from the log's start) if it is missing: Redis lost its data, or the
-- log began a new history (`history`), and every entry in it is then new.
local consumer, count, lease_ms = ARGV[3], tonumber(ARGV[4]), ARGV[5]
local lease_key = prefix .. 'webhook:lease'
local holder = redis.call('GET', lease_key)
if holder and holder ~= consumer then
  return {'busy', 0, {}}
end
redis.call('SET', lease_key, consumer, 'PX', lease_ms)

local GROUP = 'webhooks'

-- The sequence number of the group's last-delivered entry, or nil without the group.
local function delivered_up_to()
  local groups = redis.pcall('XINFO', 'GROUPS', log)
  if type(groups) ~= 'table' or groups.err then
    return nil
  end
  for _, group in ipairs(groups) do
    local name, last = nil, '0-0'
    for i = 1, #group, 2 do
      if group[i] == 'name' then
        name = group[i + 1]
      elseif group[i] == 'last-delivered-id' then
        last = group[i + 1]
      end
    end
    if name == GROUP then
      return tonumber(string.match(last, '^(%d+)'))
    end
  end
  return nil
end

local last = delivered_up_to()
if not last then
  -- A group made now owes nothing before the log's first entry.
  redis.call('XGROUP', 'CREATE', log, GROUP, '0', 'MKSTREAM')
  local first = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)[1]
  last = first and tonumber(string.match(first[1], '^(%d+)')) - 1 or 0
end
local lost = 0
if not holder then
  local cursor = '0-0'
  repeat
    local claimed = redis.call('XAUTOCLAIM', log, GROUP, consumer, 0, cursor, 'COUNT', 1000, 'JUSTID')
    cursor = claimed[1]
    lost = lost + #(claimed[3] or {})
  until cursor == '0-0'
  -- Consumers left with nothing pending are routers gone or idle: forgotten, so the group
  -- does not collect one per router start.
  for _, other in ipairs(redis.call('XINFO', 'CONSUMERS', log, GROUP)) do
    local name, pending = nil, 0
    for i = 1, #other, 2 do
      if other[i] == 'name' then
        name = other[i + 1]
      elseif other[i] == 'pending' then
        pending = other[i + 1]
      end
    end
    if name ~= consumer and pending == 0 then
      redis.call('XGROUP', 'DELCONSUMER', log, GROUP, name)
    end
  end
end

-- The rows of an XREADGROUP reply; entries trimmed away since they were handed out (no
-- fields) are settled and counted lost. Returns the rows and how many entries were read.
local function rows_of(reply)
  local rows, read = {}, 0
  if not reply then
    return rows, read
  end
  for _, entry in ipairs(reply[1][2]) do
    read = read + 1
    if entry[2] then
      rows[#rows + 1] = row_of(entry)
    else
      redis.call('XACK', log, GROUP, entry[1])
      lost = lost + 1
    end
  end
  return rows, read
end

local rows, read
repeat
  rows, read = rows_of(redis.call('XREADGROUP', 'GROUP', GROUP, consumer, 'COUNT', count, 'STREAMS', log, '0'))
until #rows > 0 or read == 0
-- Pending entries were handed out before any new one: new ones go after them.
if #rows < count then
  local fresh = rows_of(redis.call('XREADGROUP', 'GROUP', GROUP, consumer, 'COUNT', count - #rows, 'STREAMS', log,
    '>'))
  if #fresh > 0 then
    -- The numbers between the last delivered and the first fresh one were trimmed, but for
    -- those a new history skipped (see went_back.lua), which never had an entry.
    local from, to = last + 1, tonumber(fresh[1][8]) - 1
    local missing = math.max(to - from + 1, 0)
    local skipped = redis.call('GET', prefix .. 'skipped')
    if skipped and missing > 0 then
      local after, through = string.match(skipped, '^(%d+) (%d+)$')
      if after then
        missing = missing - math.max(math.min(tonumber(through), to) - math.max(tonumber(after) + 1, from) + 1, 0)
      end
    end
    lost = lost + missing
  end
  for _, row in ipairs(fresh) do
    rows[#rows + 1] = row
  end
end
return {'ok', lost, rows}
