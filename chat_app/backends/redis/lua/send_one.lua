-- send_one: give a message the room's next seq, store it in the capped history stream and
-- publish it, in one atomic step. A message whose dedup id was stored already is returned, not re-sent,
-- so a retried or resent send delivers once.
-- KEYS: seq, hist, epoch, dedup, srv, ban (the sender's ban from the room, RoomKeys.ban)
-- ARGV: envelope_head (JSON without closing brace), dedup_id, candidate_epoch,
--       history_length, room_ttl_ms, channel, server_id (the master's replication id)
-- send_one returns {seq, epoch, stored envelope or '', duplicate (0|1)}: the envelope only
-- for a duplicate (the caller built the new one itself); {-1, milliseconds left} while the
-- sender is banned from the room, {-2, reason} while the archive is restoring positions
-- (refuse_unseeded's, as a value: send_many.lua must not stop half-way): nothing is
-- stored. A ban bites here, not only at join: a member whose node missed the leave command
-- must not keep sending.
-- Every command here runs once per message (issue 27: Redis CPU per message), so each one
-- is a promise's: MGET (epoch and server id: the epoch's rules; the ban; seq, whose loss
-- starts a new epoch; the archive's marker), PTTL of the stream (whether the TTLs are due),
-- ZMSCORE (dedup), INCR (seq), XADD (history), ZADD (dedup), PUBLISH. The TTLs are renewed
-- only when this send created a key or a tenth of the room TTL has run out, and the dedup
-- ids are trimmed every 16th seq.

-- A member of the dedup set for good (score +inf: no trim reaches it), longer than Redis's
-- zset-max-listpack-value (64), so Redis keeps the set as a hash table and skiplist from its
-- first ZADD on: a listpack of the window's ~100 ids costs a scan per lookup and per insert
-- (measured ~5 us a message against ~0.5). Its absence tells that the set is new. No dedup
-- id can spell it (they start with `i:` or `k2:`).
local SENTINEL = '~ kept for good: this set stays hashed, not a listpack (chat_app send.lua) ~'

local function send_one(KEYS, ARGV)
  local epoch, srv, banned, seq_now, marker
  if ARCHIVE_KEY then
    epoch, srv, banned, seq_now, marker = unpack(redis.call('MGET', KEYS[3], KEYS[5], KEYS[6], KEYS[1], ARCHIVE_KEY))
  else
    epoch, srv, banned, seq_now = unpack(redis.call('MGET', KEYS[3], KEYS[5], KEYS[6], KEYS[1]))
  end
  if banned then return {-1, math.max(redis.call('PTTL', KEYS[6]), 0)} end
  local scores = redis.call('ZMSCORE', KEYS[4], ARGV[2], SENTINEL)
  local seen = scores[1]
  if seen and epoch then
    local stored = redis.call('XRANGE', KEYS[2], seen .. '-0', seen .. '-0')
    if #stored > 0 then
      return {tonumber(seen), epoch, stored[1][2][2], 1}
    end
  end

  if not epoch and unseeded() then return {-2, UNSEEDED} end
  local archive = archive_conf(marker)
  local ttl_ms = tonumber(ARGV[5])
  local hist_ttl = redis.call('PTTL', KEYS[2])  -- -2: no stream yet, -1: no TTL
  local new_set = not scores[2]
  local renew = new_set or hist_ttl < ttl_ms - ttl_ms / 10
  if not epoch or (not seq_now and hist_ttl ~= -2) then
    epoch = start_epoch(KEYS[3], KEYS[1], KEYS[2], KEYS[4], KEYS[5], ARGV[3], ARGV[7])
    renew, new_set = true, true
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
    renew = true
  end
  local seq = redis.call('INCR', KEYS[1])
  local digits = tostring(seq)  -- formatted once (Lua formats a number with sprintf each time)

  local envelope = ARGV[1] .. ',"seq":' .. digits .. ',"epoch":"' .. epoch .. '"}'
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], digits .. '-0', 'e', envelope)
  if new_set then  -- the sentinel first: the set is born hashed
    redis.call('ZADD', KEYS[4], 'inf', SENTINEL, digits, ARGV[2])
  else
    redis.call('ZADD', KEYS[4], digits, ARGV[2])
  end
  if seq % 16 == 0 then
    -- Ids of seqs older than the window may linger until then: harmless, a dedup hit counts
    -- only while its message is still in the stream (above).
    redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', seq - tonumber(ARGV[4]))
  end
  if renew then
    pexpire(ARGV[5], KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
    keep_position(archive, KEYS[3], KEYS[1])
  end
  if archive then redis.call('XADD', ARCHIVE_KEY .. ':outbox', 'MAXLEN', '~', archive.most, '*', 'e', envelope) end
  redis.call(PUBLISH, ARGV[6], envelope)
  return {seq, epoch, '', 0}
end
