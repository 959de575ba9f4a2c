-- Read a room's position and live members across nodes; expired entries are never counted.
-- KEYS: nodes, epoch, seq
-- ARGV: node key prefix
-- Returns {epoch or false, seq, node, sid, user, node, sid, user, ...}
local now = now_ms()
local result = {redis.call('GET', KEYS[2]), tonumber(redis.call('GET', KEYS[3]) or '0')}
for _, node in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')) do
  local entries = redis.call('HGETALL', ARGV[1] .. node)
  for i = 1, #entries, 2 do
    result[#result + 1] = node
    result[#result + 1] = entries[i]
    result[#result + 1] = entries[i + 1]
  end
end
return result
