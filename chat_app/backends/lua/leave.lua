-- Remove one member; when nobody is left on any live node, delete every key of the room.
-- Atomic, so a join on another node either sees the room or recreates it from nothing.
-- KEYS: nodes, node_hash, epoch, seq, hist, dedup
-- ARGV: instance_id, sid ('' removes the node's whole entry), node_prefix
-- Returns {deleted (0|1), dead_users...}
local now_t = redis.call('TIME')
local now = tonumber(now_t[1]) * 1000 + math.floor(tonumber(now_t[2]) / 1000)

if ARGV[2] == '' then
  redis.call('DEL', KEYS[2])
else
  redis.call('HDEL', KEYS[2], ARGV[2])
end
if redis.call('HLEN', KEYS[2]) == 0 then
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', KEYS[1], ARGV[1])
end

local result = {0}
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, node in ipairs(expired) do
  for _, u in ipairs(redis.call('HVALS', ARGV[3] .. node)) do result[#result + 1] = u end
  redis.call('DEL', ARGV[3] .. node)
end
if #expired > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now) end

if redis.call('ZCARD', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[1], KEYS[3], KEYS[4], KEYS[5], KEYS[6])
  result[1] = 1
end
return result
