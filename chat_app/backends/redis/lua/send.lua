-- Give a message the room's next seq, store it in the capped history stream and publish it,
-- in one atomic step. A message whose dedup id was stored already is returned, not re-sent,
-- so a retried or resent send delivers once.
-- KEYS: seq, hist, epoch, dedup, srv
-- ARGV: envelope_head (JSON without closing brace), dedup_id, candidate_epoch,
--       history_length, room_ttl_ms, channel, server_id (the master's replication id)
-- Returns {seq, epoch, envelope_json, duplicate (0|1)}
local epoch = redis.call('GET', KEYS[3])
local seen = redis.call('ZSCORE', KEYS[4], ARGV[2])
if seen and epoch then
  local stored = redis.call('XRANGE', KEYS[2], seen .. '-0', seen .. '-0')
  if #stored > 0 then
    return {tonumber(seen), epoch, stored[1][2][2], 1}
  end
end

local srv = redis.call('GET', KEYS[5])
if not epoch or (redis.call('EXISTS', KEYS[1]) == 0 and redis.call('EXISTS', KEYS[2]) == 1) then
  epoch = start_epoch(KEYS[3], KEYS[1], KEYS[2], KEYS[4], KEYS[5], ARGV[3], ARGV[7])
elseif ARGV[7] ~= '' and srv ~= ARGV[7] then
  -- Last written through another server (a replica promoted by a failover), the room may
  -- have lost its newest messages to asynchronous replication, so its seqs could repeat:
  -- a new epoch tells every node and client to follow the stream afresh. The stream itself
  -- stays, so a send retried across the failover is still found by its dedup id.
  if srv then
    epoch = ARGV[3]
    redis.call('SET', KEYS[3], epoch)
  end
  redis.call('SET', KEYS[5], ARGV[7])
end
local seq = redis.call('INCR', KEYS[1])

local envelope = ARGV[1] .. ',"seq":' .. seq .. ',"epoch":"' .. epoch .. '"}'
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], seq .. '-0', 'e', envelope)
redis.call('ZADD', KEYS[4], seq, ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', seq - tonumber(ARGV[4]))
pexpire(ARGV[5], KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
redis.call(PUBLISH, ARGV[6], envelope)
return {seq, epoch, envelope, 0}
