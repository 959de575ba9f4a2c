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

-- The archive (DATABASE_URL). Its marker, ARCHIVE_KEY = "<position ttl ms> <outbox max>",
-- is written by the nodes that run it once they have put back every room position the
-- archive knows (archive/positions.py). While it exists, a room's epoch and seq outlive the
-- room's other keys for the position ttl, so a room that emptied or expired continues where
-- it stopped, and every message is also added to the outbox the archive's writers read.
-- ARCHIVE_KEY is nil where the archive cannot run (a Cluster). Returns nil when it is off.
local function archive_conf(marker)
  if not marker then return nil end
  local ttl, most = string.match(marker, '^(%d+) (%d+)$')
  if not ttl then return nil end
  return {ttl = tonumber(ttl), most = tonumber(most)}
end

local function archive_now()
  if not ARCHIVE_KEY then return nil end
  return archive_conf(redis.call('GET', ARCHIVE_KEY))
end

-- Called before a script writes anything, where it would start a room afresh: a node that
-- runs the archive (ARCHIVE_REQUIRED) must not start an epoch on a Redis whose positions
-- the archive has not put back yet (a Redis restarted empty), or the room's seqs would
-- begin again under a new epoch beside the archived ones.
local UNSEEDED = 'UNSEEDED the archive is restoring room positions'

local function unseeded()
  return ARCHIVE_REQUIRED and redis.call('EXISTS', ARCHIVE_KEY) == 0
end

local function refuse_unseeded()
  if unseeded() then error({err = UNSEEDED}) end
end

-- With the archive on, a room's position lives for the archive's position ttl (0: for good).
local function keep_position(conf, epoch_key, seq_key)
  if not conf then return end
  if conf.ttl > 0 then
    pexpire(conf.ttl, epoch_key, seq_key)
  else
    redis.call('PERSIST', epoch_key)
    redis.call('PERSIST', seq_key)
  end
end
