-- Remove members of this node from a room, then sweep expired entries and departures.
-- Atomic, so a join on another node either sees the room or recreates it from nothing.
-- ARGV after the common ones: 10 what ('sid': the sid in 11; 'node': this node's whole entry;
-- 'sweep': nothing, only the sweep), 12 grace (1: a user's last departure is announced only
-- if they are not back within the grace period).
-- Returns 1 when the room was deleted.
local net = {}
if ARGV[10] == 'node' then
  for _, user in ipairs(redis.call('HVALS', KEYS[2])) do net[user] = (net[user] or 0) - 1 end
  redis.call('DEL', KEYS[2])
elseif ARGV[10] == 'sid' then
  local user = redis.call('HGET', KEYS[2], ARGV[11])
  if user then
    net[user] = -1
    redis.call('HDEL', KEYS[2], ARGV[11])
  end
end
if redis.call('EXISTS', KEYS[2]) == 0 then redis.call('ZREM', KEYS[1], ARGV[1]) end
apply(net, ARGV[12] == '1')
prune()
return delete_if_empty()
