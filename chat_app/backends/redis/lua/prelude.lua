-- Shared by the presence scripts (prepended when they are loaded).
-- Every presence script takes the same KEYS and first ARGV, so these helpers can rely on them:
-- KEYS:  1 nodes, 2 this node's hash, 3 epoch, 4 seq, 5 hist, 6 dedup, 7 users, 8 leaving, 9 srv,
--        10 names (zset, score 0: the users, in name order, for a page of them)
-- ARGV:  1 node id, 2 node key prefix, 3 room name, 4 channel, 5 presence ttl ms,
--        6 room ttl ms, 7 leave grace ms, 8 candidate epoch, 9 the most members a room may
--        have for its joins and leaves to be announced one by one; script-specific ARGV follow.
local now = now_ms()

-- Above the threshold a room's members learn its size from the nodes' periodic counts: one
-- event per join would cost every member a delivery, O(members) per join.
local function announce(action, user)
  local count = redis.call('HLEN', KEYS[7])
  if count > tonumber(ARGV[9]) then return end
  redis.call(PUBLISH, ARGV[4], cjson.encode({
    v = 1, kind = 'presence', room = ARGV[3], action = action, user = user,
    members_count = count, instance_id = ARGV[1],
  }))
end

-- Webhooks (WEBHOOK_URL): a room's occupancy and its members' arrivals and departures are
-- decided here, where they happen, so each is written once for the whole deployment: an
-- entry of the archive's outbox (field `w`, beside the messages' `e`) that a writer turns
-- into a webhook event. Only while a node running webhooks keeps ARCHIVE_KEY:webhooks alive
-- (archive/writer.py), so other deployments pay one EXISTS per arrival or departure.
local hooked = nil  -- the archive's conf while webhooks are on, else false; nil: not asked yet
local function webhooks_on()
  if hooked == nil then
    hooked = ARCHIVE_KEY ~= nil and redis.call('EXISTS', ARCHIVE_KEY .. ':webhooks') == 1 and archive_now() or false
  end
  return hooked
end

-- `user` nil for a room's own events. `seq`: the room's last seq then, which orders the event
-- among the room's messages (the stream entry's id orders it among its equals); 0 where the
-- room has no epoch, which a join then starts afresh from seq 0 (start_epoch).
local function tell(kind, user)
  local conf = webhooks_on()
  if not conf then return end
  local seq = 0
  if redis.call('EXISTS', KEYS[3]) == 1 then seq = tonumber(redis.call('GET', KEYS[4]) or '0') end
  if kind == 'room.occupied' then
    -- Watched until vacated: a room whose every node dies is settled by another node's sweep
    -- (presence.py sweep_orphans; leave.lua), else its members would never be told gone.
    redis.call('ZADD', ARCHIVE_KEY .. ':occupied', now + tonumber(ARGV[5]), ARGV[3])
  elseif kind == 'room.vacated' then
    redis.call('ZREM', ARCHIVE_KEY .. ':occupied', ARGV[3])
  end
  redis.call('XADD', ARCHIVE_KEY .. ':outbox', 'MAXLEN', '~', conf.most, '*', 'w', cjson.encode({
    type = kind, room = ARGV[3], user = user, at = now, seq = seq,
  }))
end

-- Nobody in the room: no connection on a live node, no departure waiting out its grace.
local function vacant()
  return redis.call('HLEN', KEYS[7]) == 0 and redis.call('ZCARD', KEYS[8]) == 0
end

local function arrived(user)
  announce('join', user)
  if webhooks_on() then
    if redis.call('HLEN', KEYS[7]) == 1 and redis.call('ZCARD', KEYS[8]) == 0 then
      -- Still watched: its keys expired unswept (leave.lua), and its vacancy comes first.
      if redis.call('ZSCORE', ARCHIVE_KEY .. ':occupied', ARGV[3]) then tell('room.vacated') end
      tell('room.occupied')
    end
    tell('member.joined', user)
  end
end

-- `settled`: the caller checks for a vacated room itself, after a whole sweep of departures.
local function departed(user, settled)
  announce('leave', user)
  if webhooks_on() then
    tell('member.left', user)
    if not settled and vacant() then tell('room.vacated') end
  end
end

-- Apply per-user changes in connection counts; announce first arrivals and last departures.
-- A departure with grace waits in `leaving` so a quick reconnect causes no leave/join pair.
-- Arrivals first: a rewrite that swaps one user's entry for another's never shows the room
-- empty in between (no room.vacated then room.occupied for a room that never emptied).
local function apply(net, grace)
  for _, arrivals in ipairs({true, false}) do
    for user, delta in pairs(net) do
      if delta ~= 0 and (delta > 0) == arrivals then
        local count = redis.call('HINCRBY', KEYS[7], user, delta)
        if count <= 0 then
          redis.call('HDEL', KEYS[7], user)
          redis.call('ZREM', KEYS[10], user)
          if count - delta > 0 then
            if grace then
              redis.call('ZADD', KEYS[8], now + tonumber(ARGV[7]), user)
            else
              departed(user, false)
            end
          end
        elseif count - delta <= 0 then
          redis.call('ZADD', KEYS[10], 0, user)
          if redis.call('ZREM', KEYS[8], user) == 0 then arrived(user) end
        end
      end
    end
  end
end

-- Entries of nodes that stopped heartbeating, and departures whose grace ran out: the
-- script that removes them announces them, so each is announced exactly once.
local function prune()
  local net = {}
  local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
  for _, node in ipairs(dead) do
    for _, user in ipairs(redis.call('HVALS', ARGV[2] .. node)) do
      net[user] = (net[user] or 0) - 1
    end
    redis.call('DEL', ARGV[2] .. node)
  end
  if #dead > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now) end
  apply(net, false)
  local gone = redis.call('ZRANGEBYSCORE', KEYS[8], '-inf', now)
  if #gone > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[8], '-inf', now)
    local told = false
    for _, user in ipairs(gone) do
      if not redis.call('HGET', KEYS[7], user) then
        departed(user, true)
        told = true
      end
    end
    if told and webhooks_on() and vacant() then tell('room.vacated') end
  end
end

-- When nobody is left on any live node and no departure is pending, the room is gone; with
-- the archive on, its position (epoch, seq) stays for the archive's position ttl.
local function delete_if_empty()
  if redis.call('ZCARD', KEYS[1]) == 0 and redis.call('ZCARD', KEYS[8]) == 0 then
    local archive = archive_now()
    if ARCHIVE_KEY then redis.call('ZREM', ARCHIVE_KEY .. ':occupied', ARGV[3]) end
    if archive then
      redis.call('DEL', KEYS[1], KEYS[2], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10])
      keep_position(archive, KEYS[3], KEYS[4])
    else
      redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10])
    end
    return 1
  end
  return 0
end

-- Every room key but this node's own entry, which expires with the node (touch.lua).
local function keep_alive(archive)
  pexpire(ARGV[6], KEYS[1], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10])
  keep_position(archive, KEYS[3], KEYS[4])
end
