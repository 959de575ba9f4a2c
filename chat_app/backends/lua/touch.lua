-- Write this node's presence entry for a room and keep the room's keys alive.
-- KEYS: nodes, node_hash, epoch, seq, hist, dedup
-- ARGV: instance_id, presence_ttl_ms, room_ttl_ms, candidate_epoch, node_prefix, replace (0|1),
--       then sid, user pairs
-- Returns {epoch, seq, dead_users...}: dead users are those of nodes whose entries expired,
-- pruned (and so announced) by exactly one caller.
local now_t = redis.call('TIME')
local now = tonumber(now_t[1]) * 1000 + math.floor(tonumber(now_t[2]) / 1000)

local dead_users = {}
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, node in ipairs(expired) do
  local users = redis.call('HVALS', ARGV[5] .. node)
  for _, u in ipairs(users) do dead_users[#dead_users + 1] = u end
  redis.call('DEL', ARGV[5] .. node)
end
if #expired > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now) end

if ARGV[6] == '1' then redis.call('DEL', KEYS[2]) end
if #ARGV > 6 then
  redis.call('HSET', KEYS[2], unpack(ARGV, 7))
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
else
  redis.call('ZREM', KEYS[1], ARGV[1])
end

local epoch = redis.call('GET', KEYS[3])
if not epoch then
  -- A room that is new, or whose data the store lost: its stream starts over.
  epoch = ARGV[4]
  redis.call('SET', KEYS[3], epoch)
  redis.call('DEL', KEYS[4], KEYS[5], KEYS[6])
end
for i = 1, 6 do
  if i ~= 2 then redis.call('PEXPIRE', KEYS[i], ARGV[3]) end
end
local seq = tonumber(redis.call('GET', KEYS[4]) or '0')
local result = {epoch, seq}
for _, u in ipairs(dead_users) do result[#result + 1] = u end
return result
