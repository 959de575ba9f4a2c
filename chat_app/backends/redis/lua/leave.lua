-- Remove members of this node from a room, then sweep expired entries and departures.
-- Atomic, so a join on another node either sees the room or recreates it from nothing.
-- ARGV after the common ones: 10 what ('sid': the sid in 11; 'node': this node's whole entry;
-- 'sweep': nothing, only the sweep: a departure's grace ran out, or the room's nodes all
-- died, presence.py sweep_orphans), 12 grace (1: a user's last departure is announced only
-- if they are not back within the grace period).
-- Returns 1 when the room was deleted.
begin(KEYS, ARGV)
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
if ARGV[10] == 'sweep' and webhooks_on() and vacant()
    and redis.call('ZSCORE', ARCHIVE_KEY .. ':occupied', ARGV[3]) then
  -- Watched, so told occupied, yet nobody is left to tell of: its keys expired unswept (every
  -- node was down for 2 x PRESENCE_TTL). Its members' departures are lost with them.
  tell('room.vacated')
end
if delete_if_empty() == 1 then return 1 end
if ARGV[10] == 'sweep' and webhooks_on() then
  -- The room is still held: the orphan sweep looks again when its last live entry or
  -- departure runs out (ZADD XX: only a room the sweep watches).
  local due = 0
  for _, key in ipairs({KEYS[1], KEYS[8]}) do
    local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    if last[2] then due = math.max(due, tonumber(last[2])) end
  end
  if due <= now then due = now + tonumber(ARGV[5]) end
  redis.call('ZADD', ARCHIVE_KEY .. ':occupied', 'XX', due, ARGV[3])
end
return 0
