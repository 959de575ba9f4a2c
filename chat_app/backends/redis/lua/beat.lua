-- The heartbeat's round for one room, which rewrites nothing while the store still holds
-- what this node wrote: sweep crashed nodes' entries (prune), then, if this node's hash
-- has as many entries as the node holds (ARGV[10]) and the room's epoch and users are
-- there, push this node's deadline and keep the room's keys alive. Otherwise (the store
-- lost them: a restart, a flush, a failover to a replica that missed writes) change
-- nothing more and return 1: the node rewrites the room's entries (touch.lua, replace).
-- Returns 0 or 1.
begin(KEYS, ARGV)
prune()
local held = tonumber(ARGV[10])
if held == 0 or redis.call('HLEN', KEYS[2]) ~= held
    or redis.call('EXISTS', KEYS[3]) == 0 or redis.call('EXISTS', KEYS[7]) == 0 then
  return 1
end
redis.call('PEXPIRE', KEYS[2], ARGV[6])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[5]), ARGV[1])
keep_alive(archive_now())
return 0
