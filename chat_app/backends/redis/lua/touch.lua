-- Write this node's presence entries for a room (a join, or the heartbeat's rewrite of a room
-- whose entries the store lost, beat.lua)
-- and keep the room's keys alive. A room new to the store gets a new epoch.
-- ARGV after the common ones: 10 replace (0|1), 11 names (how many of the first member names
-- to return), then sid, user pairs.
-- KEYS[11], a join's only: the user's ban from the room (server API); while it exists the
-- join changes nothing and returns {'', milliseconds left}.
-- Returns {epoch, seq, members_count, name, name, ...}.
begin(KEYS, ARGV)
if KEYS[11] then
  local left = redis.call('PTTL', KEYS[11])
  if left ~= -2 then return {'', math.max(left, 0)} end
end
local epoch = redis.call('GET', KEYS[3])
if not epoch then refuse_unseeded() end
prune()
local net = {}
if ARGV[10] == '1' then
  local old = redis.call('HGETALL', KEYS[2])
  for i = 2, #old, 2 do net[old[i]] = (net[old[i]] or 0) - 1 end
  redis.call('DEL', KEYS[2])
else
  for i = 12, #ARGV, 2 do
    local old = redis.call('HGET', KEYS[2], ARGV[i])
    if old then net[old] = (net[old] or 0) - 1 end
  end
end
for i = 12, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  net[ARGV[i + 1]] = (net[ARGV[i + 1]] or 0) + 1
end
apply(net, false)

if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('PEXPIRE', KEYS[2], ARGV[6])
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[5]), ARGV[1])
else
  redis.call('ZREM', KEYS[1], ARGV[1])
end

local started = not epoch
if started then epoch = start_epoch(KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[9], ARGV[8], '') end
-- The room's keys are renewed (keep_alive: nine PEXPIREs, more with the archive) only when
-- due, as send_batch.lua's: when this join started the epoch, or when a key it may have
-- created (nodes, users, names: no TTL yet) or any of them has had a tenth of the room TTL
-- run out. Only whole renewals (here, beat.lua) set those three keys' TTLs, so fresh ones
-- say every room key was renewed within the last tenth; the keys created since by others
-- got theirs from the send that created them (send_batch.lua). This node's own entry
-- (above) is renewed by every join.
local ttl = tonumber(ARGV[6])
local due = started
for _, key in ipairs({KEYS[1], KEYS[7], KEYS[10]}) do
  if due then break end
  due = redis.call('PTTL', key) < ttl - ttl / 10
end
if due then keep_alive(archive_now()) end
local result = {epoch, tonumber(redis.call('GET', KEYS[4]) or '0'), redis.call('HLEN', KEYS[7])}
local wanted = tonumber(ARGV[11])
if wanted > 0 then
  for _, name in ipairs(redis.call('ZRANGE', KEYS[10], 0, wanted - 1)) do result[#result + 1] = name end
end
return result
