-- Several messages in one call (send_one.lua), for any rooms of one server: each message's
-- 6 KEYS and 7 ARGV as send_one's, one after the other. One EVALSHA per batch instead of one
-- per message: the call's own cost (parsing, the script's set-up, the reply) is paid once
-- (issue 27). Returns one send_one answer per message, in order. Not on a Cluster, where a
-- call's keys must share a slot.
local results = {}
for i = 0, #KEYS / 6 - 1 do
  local k, a = 6 * i, 7 * i
  results[i + 1] = send_one(
    {KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4], KEYS[k + 5], KEYS[k + 6]},
    {ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5], ARGV[a + 6], ARGV[a + 7]}
  )
end
return results
