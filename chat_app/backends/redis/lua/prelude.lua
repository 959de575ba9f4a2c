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

-- Apply per-user changes in connection counts; announce first arrivals and last departures.
-- A departure with grace waits in `leaving` so a quick reconnect causes no leave/join pair.
local function apply(net, grace)
  for user, delta in pairs(net) do
    if delta ~= 0 then
      local count = redis.call('HINCRBY', KEYS[7], user, delta)
      if count <= 0 then
        redis.call('HDEL', KEYS[7], user)
        redis.call('ZREM', KEYS[10], user)
        if count - delta > 0 then
          if grace then
            redis.call('ZADD', KEYS[8], now + tonumber(ARGV[7]), user)
          else
            announce('leave', user)
          end
        end
      elseif count - delta <= 0 then
        redis.call('ZADD', KEYS[10], 0, user)
        if redis.call('ZREM', KEYS[8], user) == 0 then announce('join', user) end
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
    for _, user in ipairs(gone) do
      if not redis.call('HGET', KEYS[7], user) then announce('leave', user) end
    end
  end
end

-- When nobody is left on any live node and no departure is pending, the room is gone; with
-- the archive on, its position (epoch, seq) stays for the archive's position ttl.
local function delete_if_empty()
  if redis.call('ZCARD', KEYS[1]) == 0 and redis.call('ZCARD', KEYS[8]) == 0 then
    local archive = archive_now()
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
