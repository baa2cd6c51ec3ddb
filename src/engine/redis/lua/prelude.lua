-- Prepended to every script. KEYS[1] is the sequence key of the shard the call is about,
-- `{p}seq`, where {p} is the key prefix ("presence:") and, on Redis Cluster, the shard's
-- hash tag ("presence:{12}"): every key below is derived from it, so all the keys a call
-- touches share its hash slot, which Redis Cluster routes the call by and requires. ARGV[1]
-- is how long, in ms, an offline user's meta hash (its last seen) is kept; ARGV[2] the
-- lease of a session, in ms; ARGV[3] how many transitions the shard's change log keeps at
-- least, which the prelude takes out of ARGV: each script's own arguments start at ARGV[3].
--
-- Keys of the shard:
--   {p}leases      zset: "user\nsession" -> that session's lease deadline (Unix ms, Redis
--                  clock). Holds exactly the sessions registered and not yet ended (a
--                  lapsed one until the sweep ends it): the snapshot's index of who is
--                  online, and the sweep queue. A heartbeat of a live session writes only
--                  its own score here (see renewals.rs): nothing else changes, and
--                  everything that depends on the time of the last heartbeat is derived
--                  from this score when it is read (lastSeen of a user shown online) or
--                  when the session lapses (lastSeen of a user gone offline).
--                  While the session's router holds its lease in {p}routers, the score
--                  may run ahead of the deadline: renewals.rs writes it once every few
--                  heartbeats, ahead of them, and that router keeps the real deadline.
--                  It writes the real one here before it comes (a client gone silent),
--                  and at its shutdown (`linger.lua`); when its lease lapses instead,
--                  `sweep.lua` brings its sessions' scores back within their deadlines
--   {p}routers     zset: "R\nlease_ms\nahead_ms\ngrace_ms" -> the deadline of router R's
--                  lease (Unix ms), renewed every second (`router_lease.lua`): the
--                  routers vouching for the deadlines of their sessions. While it holds
--                  it, R keeps every session's score at most `ahead` past its deadline,
--                  and the real deadline written for every session due within `grace`
--                  (and within its lease)
--   {p}router:R    set: the members of {p}leases whose score router R wrote ahead
--                  (`extend.lua`), so that they are found when its lease lapses; a
--                  member leaves it when its real deadline is written, and when it ends
--   {p}router:R:writes  counter: the calls in which router R wrote ahead, so that it
--                  notices writes Redis lost (`router_lease.lua`)
--   {p}seq         counter numbering every transition of the shard
--   {p}epoch       the shard's history: made anew whenever {p}epoch or {p}seq is missing
--                  (Redis lost its data), so a position in the log of an earlier history
--                  is never taken for one in this history
--   {p}log         stream, the shard's change log: one entry per transition, appended in
--                  the call that decides it, with the id `seq-0`; trimmed (MAXLEN ~) to
--                  the newest ARGV[3] entries or a few more. Fields: u user, s status,
--                  v version, c cause, t decided at (ms), g groups after, pg groups before
--                  (newline-separated), and when set l lastSeen, d deviceId, x text,
--                  a lastActivity, y activity
--                  The log is also the webhook outbox: its consumer group `webhooks`
--                  records what was handed out for delivery and not yet settled
--   {p}webhook:lease  the router delivering the shard's webhooks (PX, renewed while it
--                  lives; see webhook_take.lua)
--   {p}webhook:dead   stream: webhook events given up at the retry horizon
--   {p}skipped     "<after> <through>": the numbers the shard's last new history skipped
--                  (went_back.lua), which never had a log entry
--   {p}active      zset: user id -> last activity (ms), for users shown online in mode
--                  "online": the auto-away queue
--   {p}group:G     zset: user id -> when it last had a session in group G (ms), or +inf
--                  while it has one: the group's participants within the last-seen
--                  retention; expires that long after its last live participant left
-- Keys of user U (in its shard):
--   {p}meta:U      hash: status (what others see), lastSeen, deviceId, role, version,
--                  groups, mode (chosen: online/away/dnd/invisible), text, activity
--                  (`type\nstartedAt\nname`, see `Activity::encode`), lastActivity,
--                  idle ("1" once away_after passed without activity); expires ARGV[1]
--                  ms after the user's last session ends
--   {p}sessions:U  set: the user's sessions in {p}leases
--   {p}sgroups:U   hash: session id -> its token's groups (newline-separated), for the
--                  sessions in {p}sessions:U; meta `groups` is their union
--   {p}devices:U   hash: device id -> the session holding it, for sessions in
--                  {p}sessions:U: a new session on the device replaces that one
--                  (these keys have no TTL, which would cost every heartbeat a write:
--                  `settle` deletes them with the user's last session, and a session is in
--                  {p}leases until then, so a sweep gets to it)
--   {p}replaced:S  the session that session S's connect replaced (its device's holder),
--                  for REPLAY_MS: a replay of that connect returns it again

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local prefix = string.sub(KEYS[1], 1, -4)
local last_seen_ms = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local log_cap = table.remove(ARGV, 3)
local log = prefix .. 'log'
local leases = prefix .. 'leases'
local routers = prefix .. 'routers'
local active = prefix .. 'active'
-- How long a connect's replaced session is remembered for a replay of that connect (ms):
-- far longer than a call and its one replay take.
local REPLAY_MS = 10000
-- A group participant's score while it has a session in the group.
local LIVE = '+inf'

local function keys_of(user)
  return prefix .. 'meta:' .. user, prefix .. 'sessions:' .. user, prefix .. 'sgroups:' .. user,
    prefix .. 'devices:' .. user
end

-- The member of {p}leases of a session.
local function lease_of(user, session)
  return user .. '\n' .. session
end

-- The lease deadline of a session of `user`, or nil when it has none.
local function deadline(user, session)
  return tonumber(redis.call('ZSCORE', leases, lease_of(user, session)))
end

-- When the user was last heard from, if it has sessions: its latest lease deadline less
-- the lease (each heartbeat moves its session's deadline, and nothing else), or the last
-- seen recorded when that is later (a lingering session's deadline was shortened when its
-- connection closed, which recorded that moment).
local function last_heartbeat(user)
  local meta, skey = keys_of(user)
  local latest = nil
  for _, session in ipairs(redis.call('SMEMBERS', skey)) do
    local until_ = deadline(user, session)
    if until_ and (not latest or until_ > latest) then
      latest = until_
    end
  end
  if not latest then
    return nil
  end
  return math.max(math.min(latest - ttl, now), tonumber(redis.call('HGET', meta, 'lastSeen')) or 0)
end

-- The groups each user was in before this call changed them (see `settle`), for the log.
local groups_before = {}

-- A new epoch: Redis' clock in microseconds, unique to the moment it is made.
local function new_epoch()
  return t[1] .. string.format('%06d', tonumber(t[2]))
end

-- The shard's epoch, made anew (with an empty log) when Redis lost the epoch or the
-- sequence, or the log is not a stream (written by something else under the prefix: an
-- append must never fail half way through a transition): a new history, whose positions
-- compare with no earlier one's.
local function history()
  local epoch_key = prefix .. 'epoch'
  local epoch = redis.call('GET', epoch_key)
  local kind = redis.call('TYPE', log).ok
  if epoch and redis.call('EXISTS', KEYS[1]) == 1 and (kind == 'stream' or kind == 'none') then
    return epoch
  end
  epoch = new_epoch()
  redis.call('SET', epoch_key, epoch)
  redis.call('SET', KEYS[1], 0, 'NX')
  redis.call('DEL', log)
  return epoch
end

-- Appends a transition (a row as `transition` returns it) to the change log, trimmed to
-- its cap, under the id of its sequence number.
local function append(row, before)
  local entry = {'u', row[1], 's', row[2], 'v', row[3], 'c', row[6], 't', row[7], 'g', row[9] or '',
    'pg', before or row[9] or ''}
  for _, field in ipairs({{'l', 4}, {'d', 5}, {'x', 10}, {'a', 11}, {'y', 12}}) do
    if row[field[2]] then
      entry[#entry + 1] = field[1]
      entry[#entry + 1] = row[field[2]]
    end
  end
  redis.call('XADD', log, 'MAXLEN', '~', log_cap, row[8] .. '-0', unpack(entry))
end

-- A change-log entry ({id, fields}) as a row: {user, status, version, lastSeen, deviceId,
-- cause, now, seq, groups, text, lastActivity, groups before} (false where unset).
local function row_of(entry)
  local order = {u = 1, s = 2, v = 3, l = 4, d = 5, c = 6, t = 7, g = 9, x = 10, a = 11, y = 12, pg = 13}
  local row = {false, false, false, false, false, false, false, string.match(entry[1], '^(%d+)'), false, false, false,
    false, false}
  local fields = entry[2]
  for i = 1, #fields, 2 do
    local at = order[fields[i]]
    if at then
      row[at] = fields[i + 1]
    end
  end
  return row
end

-- The set {p}router:R of router R.
local function router_set(router)
  return prefix .. 'router:' .. router
end

-- The set {p}router:R of a session of router R (a session id is `R:n`).
local function router_sessions(session)
  return router_set(string.match(session, '^(.*):') or '')
end

-- Registers a session's lease, or ends it (`at` nil).
local function set_lease(user, session, at)
  local _, skey = keys_of(user)
  local member = lease_of(user, session)
  if at then
    redis.call('SADD', skey, session)
    -- A live session's score may run ahead of `at` (see {p}leases): kept.
    redis.call('ZADD', leases, 'GT', at, member)
  else
    redis.call('SREM', skey, session)
    redis.call('ZREM', leases, member)
    redis.call('SREM', router_sessions(session), member)
  end
end

-- Removes the user's device claims held by sessions that `keep` refuses.
local function release_devices(user, keep)
  local _, _, _, devices = keys_of(user)
  local claims = redis.call('HGETALL', devices)
  for i = 1, #claims, 2 do
    if not keep(claims[i + 1]) then
      redis.call('HDEL', devices, claims[i])
    end
  end
end

-- The groups of a newline-separated list, as a set.
local function group_set(list)
  local set = {}
  for group in string.gmatch(list, '[^\n]+') do
    set[group] = true
  end
  return set
end

-- Whether two newline-separated lists of groups hold the same groups, in any order.
local function same_groups(a, b)
  local set = group_set(a)
  for group in string.gmatch(b, '[^\n]+') do
    if not set[group] then
      return false
    end
    set[group] = nil
  end
  return next(set) == nil
end

-- The user has a session in `group` from now on: a participant until it has none, and
-- the group's key lives as long as it does. (Group and auto-away indexes are written with
-- `redis.pcall`: a key of another type there, written by something else under the prefix,
-- costs that index its entry, never the transition of every user that touches it.)
local function joins(user, group)
  local gkey = prefix .. 'group:' .. group
  redis.pcall('ZADD', gkey, LIVE, user)
  redis.pcall('ZREMRANGEBYSCORE', gkey, '-inf', now - last_seen_ms - ttl)
  redis.pcall('PERSIST', gkey)
end

-- The user had its last session in each group of `old` not in `new` (newline-separated)
-- at `at`: it stays a participant for the last-seen retention from then, and a group
-- left without live participants expires that long after.
local function leaves(user, old, new, at)
  local kept = group_set(new)
  for group in string.gmatch(old, '[^\n]+') do
    if not kept[group] then
      local gkey = prefix .. 'group:' .. group
      redis.pcall('ZADD', gkey, at, user)
      if redis.pcall('ZCOUNT', gkey, LIVE, LIVE) == 0 then
        redis.pcall('PEXPIRE', gkey, last_seen_ms + ttl)
      end
    end
  end
end

-- Ends the user's lapsed sessions (and forgets the groups and devices of sessions gone),
-- and sets the user's groups to the union of the live sessions' groups (kept as they were
-- once none is left, for reads of its last seen; kept too while a live session's groups
-- are unknown: registered by an older router). A user left with no session was last seen
-- at the last heartbeat of its lapsed sessions (their latest deadline less the lease),
-- or now when none lapsed (its last one was ended), unless it is invisible.
-- Returns how many live sessions the user has, and whether its groups changed.
local function settle(user)
  local meta, skey, sgroups, devices = keys_of(user)
  local count, lapsed = 0, nil
  for _, session in ipairs(redis.call('SMEMBERS', skey)) do
    local until_ = deadline(user, session)
    if until_ and until_ > now then
      count = count + 1
    else
      set_lease(user, session, nil)
      if until_ and (not lapsed or until_ > lapsed) then
        lapsed = until_
      end
    end
  end
  if count == 0 then
    redis.call('DEL', skey, sgroups, devices)
    local seen = now
    if lapsed then
      -- Not before the last seen recorded (a lingering session's close).
      seen = math.max(math.min(lapsed - ttl, now), tonumber(redis.call('HGET', meta, 'lastSeen')) or 0)
      if redis.call('HGET', meta, 'mode') ~= 'invisible' then
        redis.call('HSET', meta, 'lastSeen', seen)
      end
    end
    leaves(user, redis.call('HGET', meta, 'groups') or '', '', seen)
    return 0, false
  end
  release_devices(user, function(holder)
    return redis.call('SISMEMBER', skey, holder) == 1
  end)
  local union, seen, known = {}, {}, 0
  local entries = redis.call('HGETALL', sgroups)
  for i = 1, #entries, 2 do
    if redis.call('SISMEMBER', skey, entries[i]) == 1 then
      known = known + 1
      for group in string.gmatch(entries[i + 1], '[^\n]+') do
        if not seen[group] then
          seen[group] = true
          union[#union + 1] = group
        end
      end
    else
      redis.call('HDEL', sgroups, entries[i])
    end
  end
  if known < count then
    return count, false
  end
  local groups = table.concat(union, '\n')
  local old = redis.call('HGET', meta, 'groups') or ''
  if same_groups(old, groups) then
    return count, false
  end
  leaves(user, old, groups, now)
  groups_before[user] = groups_before[user] or old
  redis.call('HSET', meta, 'groups', groups)
  return count, true
end

-- Brings what others see of the user in line with its sessions, mode and idleness, and
-- keeps its auto-away entry in `active` current. Returns the transition as
-- {user, status, version, lastSeen, deviceId, cause, now, seq, groups, text, lastActivity,
-- activity}
-- when the shown status changed (or `force` and the user is shown, for a new text or new
-- groups; then with `forced_cause` when the status itself did not change), else nil.
-- `seq` numbers every transition of the shard, so subscribers notice one they never
-- received; the transition is in the shard's change log under that number. The version is above the last one and at least `now`, so versions keep
-- growing even if Redis restarts empty.
local function transition(user, cause, force, forced_cause)
  local meta, skey = keys_of(user)
  local m = redis.call('HMGET', meta, 'status', 'version', 'mode', 'idle', 'lastActivity')
  local mode = m[3] or 'online'
  local connected = redis.call('EXISTS', skey) == 1
  local shown = 'offline'
  if connected and mode ~= 'invisible' then
    shown = mode
    if mode == 'online' and m[4] == '1' then
      shown = 'away'
    end
  end
  if shown == 'online' and mode == 'online' then
    redis.pcall('ZADD', active, tonumber(m[5]) or now, user)
  else
    redis.pcall('ZREM', active, user)
  end
  if (m[1] or 'offline') == shown then
    if not (force and shown ~= 'offline') then
      return nil
    end
    cause = forced_cause or cause
  end
  local version = math.max((tonumber(m[2]) or 0) + 1, now)
  redis.call('HSET', meta, 'status', shown, 'version', version)
  -- Going offline by choice (disconnect, invisible) is seen now; an expired user was last
  -- seen at its last heartbeat (set by `settle`).
  if shown == 'offline' and cause ~= 'expired' then
    redis.call('HSET', meta, 'lastSeen', now)
  end
  if connected then
    redis.call('PERSIST', meta)
  else
    redis.call('PEXPIRE', meta, last_seen_ms)
  end
  local f = redis.call('HMGET', meta, 'lastSeen', 'deviceId', 'groups', 'text', 'lastActivity', 'activity')
  local heard = shown ~= 'offline' and last_heartbeat(user)
  if heard then
    f[1] = string.format('%d', heard)
  end
  history()
  local seq = redis.call('INCR', KEYS[1])
  local row = {user, shown, tostring(version), f[1] or false, f[2] or false, cause, tostring(now), tostring(seq),
    f[3] or false, f[4] or false, f[5] or false, f[6] or false}
  append(row, groups_before[user])
  return row
end

-- The user is seen now, on `device` ('' keeps the stored one).
local function seen_on(meta, device)
  redis.call('HSET', meta, 'lastSeen', now)
  if device ~= '' then
    redis.call('HSET', meta, 'deviceId', device)
  end
end

-- The live session, other than `session`, that holds the user's `device` ('' for none).
local function device_holder(user, session, device)
  if device == '' then
    return nil
  end
  local _, _, _, devices = keys_of(user)
  local holder = redis.call('HGET', devices, device)
  if holder and holder ~= session and (deadline(user, holder) or 0) > now then
    return holder
  end
  return nil
end

-- Registers or renews a session: the whole of a connect, or of a heartbeat on a session
-- that lapsed. deviceId '' keeps the stored one; groups are newline-separated (ids hold no
-- control characters); activity '1' on connect resets the away timer (a heartbeat is not
-- activity: phones send them unattended); mode, text and chosen (its activity) are the
-- session's chosen status ('' = none), restored only if Redis lost the user's mode (a
-- restart without data).
-- The session claims its device: with replace '1' (a new session) the live session that
-- held it is ended, after this one is registered; otherwise (a renewal) a live holder
-- means this session was replaced, and nothing is written.
-- Returns the transition, if any, and the replaced session, if any.
local function lease(user, session, device, role, groups, activity, mode, text, replace, chosen)
  local meta, _, sgroups, devices = keys_of(user)
  local holder = device_holder(user, session, device)
  if holder and replace ~= '1' then
    return nil, nil
  end
  if mode ~= '' and redis.call('HEXISTS', meta, 'mode') == 0 then
    redis.call('HSET', meta, 'mode', mode)
    if text ~= '' then
      redis.call('HSET', meta, 'text', text)
    end
    if (chosen or '') ~= '' then
      redis.call('HSET', meta, 'activity', chosen)
    end
  end
  set_lease(user, session, now + ttl)
  redis.call('HSET', sgroups, session, groups)
  if device ~= '' then
    redis.call('HSET', devices, device, session)
  end
  -- What this session replaced is kept a while: a connect replayed after its reply was
  -- lost (its connection cut) finds its device already claimed by itself, and must still
  -- name the session it ended, or that session's router never hears of it.
  local replaced_key = prefix .. 'replaced:' .. session
  if holder then
    set_lease(user, holder, nil)
    redis.call('SET', replaced_key, holder, 'PX', REPLAY_MS)
  elseif replace == '1' and device ~= '' then
    holder = redis.call('GET', replaced_key) or nil
  end
  for group in string.gmatch(groups, '[^\n]+') do
    joins(user, group)
  end
  -- New groups are news to the dashboards of the old and the new groups alike.
  local _, regrouped = settle(user)
  redis.call('HSET', meta, 'role', role)
  -- An invisible user's sessions must not reveal it through lastSeen or deviceId: it
  -- reads as it did when it went invisible.
  if redis.call('HGET', meta, 'mode') ~= 'invisible' then
    seen_on(meta, device)
  end
  if activity == '1' then
    redis.call('HSET', meta, 'lastActivity', now)
    redis.call('HDEL', meta, 'idle')
  end
  return transition(user, 'connect', regrouped, 'groups'), holder
end
