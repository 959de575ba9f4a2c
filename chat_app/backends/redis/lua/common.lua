-- Rules every script shares (prepended to each when it is loaded): one clock, one way to
-- start a room afresh, one way to keep keys alive.

-- Milliseconds by the server's clock: every node's scripts compare against the same one.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The store lost this room's position, or never had it: a new epoch, and nothing of the
-- old stream kept (seq from 0, no history, no dedup ids), so no seq is ever reused within
-- an epoch. `server_id` ('' for none yet) names the server now holding the room.
local function start_epoch(epoch_key, seq_key, hist_key, dedup_key, srv_key, candidate, server_id)
  redis.call('SET', epoch_key, candidate)
  redis.call('DEL', seq_key, hist_key, dedup_key)
  if server_id ~= '' then redis.call('SET', srv_key, server_id) else redis.call('DEL', srv_key) end
  return candidate
end

local function pexpire(ttl_ms, ...)
  for _, key in ipairs({...}) do redis.call('PEXPIRE', key, ttl_ms) end
end
