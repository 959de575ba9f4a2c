-- Shared by the presence scripts (prepended when they are loaded).
-- Every presence script takes the same KEYS and first ARGV, so these helpers can rely on them:
-- KEYS:  1 nodes, 2 this node's hash, 3 epoch, 4 seq, 5 hist, 6 dedup, 7 users, 8 leaving, 9 srv,
--        10 names (zset, score 0: the users, in name order, for a page of them)
-- ARGV:  1 node id, 2 node key prefix, 3 room name, 4 channel, 5 presence ttl ms,
--        6 room ttl ms, 7 leave grace ms, 8 candidate epoch, 9 the most members a room may
--        have for its joins and leaves to be announced one by one; script-specific ARGV follow.
-- This call's KEYS, ARGV and clock, and `hooked` (the archive's conf while webhooks are on,
-- else false; nil: not asked yet), set by `begin`, which every presence script calls first:
-- upvalues, not globals, so the same code runs as a script (EVAL: KEYS and ARGV are
-- globals, the whole script runs per call) and as a Redis Function (they are its callback's
-- arguments, and a library's top level runs once).
local keys, args, now, hooked

local function begin(call_keys, call_args)
  keys, args, now, hooked = call_keys, call_args, now_ms(), nil
end

-- Above the threshold a room's members learn its size from the nodes' periodic counts: one
-- event per join would cost every member a delivery, O(members) per join.
local function announce(action, user)
  local count = redis.call('HLEN', keys[7])
  if count > tonumber(args[9]) then return end
  redis.call(PUBLISH, args[4], cjson.encode({
    v = 1, kind = 'presence', room = args[3], action = action, user = user,
    members_count = count, instance_id = args[1],
  }))
end

-- Webhooks (WEBHOOK_URL): a room's occupancy and its members' arrivals and departures are
-- decided here, where they happen, so each is written once for the whole deployment: an
-- entry of the archive's outbox (field `w`, beside the messages' `e`) that a writer turns
-- into a webhook event. Only while a node running webhooks keeps ARCHIVE_KEY:webhooks alive
-- (archive/writer.py), so other deployments pay one EXISTS per arrival or departure.
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
  if redis.call('EXISTS', keys[3]) == 1 then seq = tonumber(redis.call('GET', keys[4]) or '0') end
  if kind == 'room.occupied' then
    -- Watched until vacated: a room whose every node dies is settled by another node's sweep
    -- (presence.py sweep_orphans; leave.lua), else its members would never be told gone.
    redis.call('ZADD', ARCHIVE_KEY .. ':occupied', now + tonumber(args[5]), args[3])
  elseif kind == 'room.vacated' then
    redis.call('ZREM', ARCHIVE_KEY .. ':occupied', args[3])
  end
  redis.call('XADD', ARCHIVE_KEY .. ':outbox', 'MAXLEN', '~', conf.most, '*', 'w', cjson.encode({
    type = kind, room = args[3], user = user, at = now, seq = seq,
  }))
end

-- Nobody in the room: no connection on a live node, no departure waiting out its grace.
local function vacant()
  return redis.call('HLEN', keys[7]) == 0 and redis.call('ZCARD', keys[8]) == 0
end

local function arrived(user)
  announce('join', user)
  if webhooks_on() then
    if redis.call('HLEN', keys[7]) == 1 and redis.call('ZCARD', keys[8]) == 0 then
      -- Still watched: its keys expired unswept (leave.lua), and its vacancy comes first.
      if redis.call('ZSCORE', ARCHIVE_KEY .. ':occupied', args[3]) then tell('room.vacated') end
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
        local count = redis.call('HINCRBY', keys[7], user, delta)
        if count <= 0 then
          redis.call('HDEL', keys[7], user)
          redis.call('ZREM', keys[10], user)
          if count - delta > 0 then
            if grace then
              redis.call('ZADD', keys[8], now + tonumber(args[7]), user)
            else
              departed(user, false)
            end
          end
        elseif count - delta <= 0 then
          redis.call('ZADD', keys[10], 0, user)
          if redis.call('ZREM', keys[8], user) == 0 then arrived(user) end
        end
      end
    end
  end
end

-- Entries of nodes that stopped heartbeating, and departures whose grace ran out: the
-- script that removes them announces them, so each is announced exactly once.
local function prune()
  local net = {}
  local dead = redis.call('ZRANGEBYSCORE', keys[1], '-inf', now)
  for _, node in ipairs(dead) do
    for _, user in ipairs(redis.call('HVALS', args[2] .. node)) do
      net[user] = (net[user] or 0) - 1
    end
    redis.call('DEL', args[2] .. node)
  end
  if #dead > 0 then redis.call('ZREMRANGEBYSCORE', keys[1], '-inf', now) end
  apply(net, false)
  local gone = redis.call('ZRANGEBYSCORE', keys[8], '-inf', now)
  if #gone > 0 then
    redis.call('ZREMRANGEBYSCORE', keys[8], '-inf', now)
    local told = false
    for _, user in ipairs(gone) do
      if not redis.call('HGET', keys[7], user) then
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
  if redis.call('ZCARD', keys[1]) == 0 and redis.call('ZCARD', keys[8]) == 0 then
    local archive = archive_now()
    if ARCHIVE_KEY then redis.call('ZREM', ARCHIVE_KEY .. ':occupied', args[3]) end
    if archive then
      redis.call('DEL', keys[1], keys[2], keys[5], keys[6], keys[7], keys[8], keys[9], keys[10])
      keep_position(archive, keys[3], keys[4])
    else
      redis.call('DEL', keys[1], keys[2], keys[3], keys[4], keys[5], keys[6], keys[7], keys[8], keys[9], keys[10])
    end
    return 1
  end
  return 0
end

-- Every room key but this node's own entry, which expires with the node (touch.lua).
local function keep_alive(archive)
  pexpire(args[6], keys[1], keys[3], keys[4], keys[5], keys[6], keys[7], keys[8], keys[9], keys[10])
  keep_position(archive, keys[3], keys[4])
end
