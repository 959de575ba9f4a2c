-- send_batch: give each message its room's next seq, store it in the capped history stream
-- and publish it, all in one atomic step. A message whose dedup id was stored already is
-- returned, not re-sent, so a retried or resent send delivers once. Called by send.lua (one
-- message) and send_many.lua (a batch), whose headers give their KEYS and ARGV: 6 KEYS per
-- message (seq, hist, epoch, dedup, srv, ban: the sender's ban, RoomKeys.ban).
-- Each message's answer is three entries of one flat list (a table per answer cost Redis
-- more to turn into its reply than any command of the send): seq, epoch, false; or seq,
-- epoch, the stored envelope for a duplicate (for a new message the caller built the
-- envelope itself); -1, milliseconds left, false while the sender is banned from the room;
-- -2, reason, false while the archive is restoring positions (refuse_unseeded's, as a value:
-- a batch must not stop half-way): nothing is stored. A ban bites here, not only at join: a
-- member whose node missed the leave command must not keep sending.
--
-- Redis CPU per message (issue 27 item 4) is Redis's work per command plus the cost of each
-- redis.call from Lua (arguments made Redis objects, the command looked up and timed, its
-- reply turned back into Lua), so the common path makes as few calls as its promises allow:
--   per batch    MGET: every message's epoch and server id (the epoch's rules), the
--                sender's ban, seq (whose loss starts a new epoch), and the archive's marker
--   per room     INCRBY of the seq by the room's messages in the batch
--     and batch
--   per message  ZADD NX (dedup: 0 says the id is stored already), XADD NOMKSTREAM
--                (history, untrimmed: `xadd`; nil says the stream is gone: made again,
--                TTLs due),
--                PUBLISH (one per message: a rolling deploy's old nodes read that format;
--                + the outbox's XADD with the archive on)
-- The rest is rare: the dedup set's and the stream's trims when a 16th seq is passed; the
-- renewal (five PEXPIREs) when this batch created a key or switched servers, or when the
-- calling node asks for it (`renew`: once per room and tenth of the room TTL, send.py
-- Renewals; a PTTL per room and batch to find out here cost ~5 % of Redis's work per
-- message); on a duplicate, ZSCORE + XRANGE for the stored message; on a lost seq or epoch,
-- the checks that decide the new epoch. A room's later messages in a batch follow its
-- first's state (a Lua table): a second message gets the next seq, the epoch the first
-- started, the dedup set it made, and a retry of the first in the same batch is the first's
-- duplicate.
-- Three passes: every message's epoch, dedup id and seq (in order); each room's seq written
-- (so a batch stopped half-way by an error leaves a gap, never a seq given twice); then
-- each message stored and published (in order), each room's trim and renewal.

-- A member of the dedup set for good (score +inf: no trim reaches it), longer than Redis's
-- zset-max-listpack-value (64), so Redis keeps the set as a hash table and skiplist from its
-- first ZADD on: a listpack of the window's ~100 ids costs a scan per lookup and per insert
-- (measured ~5 us a message against ~0.5). No dedup id can spell it (they start with `i:` or
-- `k2:`). A set made without it (evicted alone, or by an older send.lua) gets it, and its
-- TTL, at its next renewal.
local SENTINEL = '~ kept for good: this set stays hashed, not a listpack (chat_app send.lua) ~'

-- The message stored under a dedup id, while its seq is still in the stream.
local function stored_under(hist, seen)
  local stored = redis.call('XRANGE', hist, seen .. '-0', seen .. '-0')
  if #stored > 0 then return stored[1][2][2] end
  return nil
end

-- The stream keeps a room's last `length` seqs, which joins, recoveries and history pages
-- show (history.lua reads no further back). Trimming it exactly (`MAXLEN length`) on every
-- XADD cost more than any other command of a send: Redis walks every entry already marked
-- deleted in the oldest stream node to mark one more (callgrind: ~15,000 of ~97,000
-- instructions a message). It is trimmed with the dedup set instead, every 16th seq, by
-- whole nodes (`MAXLEN ~`), so it holds up to 16 entries and a node's worth
-- (stream-node-max-entries/-bytes) older than the window, which reads and dedup hits
-- disregard.
-- The entry's id is the seq (`<seq>-0`, given as `<seq>`: Redis adds the -0).
local function xadd(hist, exists, digits, envelope)
  if exists then return redis.call('XADD', hist, 'NOMKSTREAM', digits, 'e', envelope) end
  return redis.call('XADD', hist, digits, 'e', envelope)
end

-- A room's state at its first message in the batch, from the MGET: epoch, srv and seq as
-- stored (false when missing); `ready` once its epoch is settled for this batch; `first`, the
-- first seq this batch gives, and `k`, where the room's keys start in KEYS. Every field is
-- in the constructor: a field added later makes Lua rehash the table.
local function room_state(epoch, srv, seq)
  return {epoch = epoch, srv = srv, seq = seq and tonumber(seq) or false, ready = false, checked_srv = false,
          new_set = false, renew = false, first = false, k = 0}
end

-- A new epoch for the batch's message `i` (send_batch's `candidate`).
local function epoch_at(candidate, i)
  if i == 0 then return candidate end
  return candidate .. i
end

-- The epoch's rules, once per room and batch, before its first message is stored. Returns
-- an answer's three entries when the message is settled here (a duplicate, a refusal), else
-- nothing.
local function settle(st, seq_key, hist, epoch_key, dedup, srv_key, id, candidate, i, server_id)
  local fresh = false
  if not st.epoch then
    if unseeded() then return -2, UNSEEDED, false end
    fresh = true
  elseif not st.seq then
    -- The seq is gone (evicted, a partial restore): a retry whose message is still in the
    -- stream is its duplicate; otherwise, while the stream exists, a new epoch, so no seq
    -- is reused. Without a stream (a room started by a join) the seq starts here.
    local seen = redis.call('ZSCORE', dedup, id)
    if seen then
      local stored = stored_under(hist, seen)
      if stored then return tonumber(seen), st.epoch, stored end
    end
    if redis.call('EXISTS', hist) == 1 then fresh = true else st.seq, st.renew = 0, true end
  end
  if fresh then
    st.epoch = start_epoch(epoch_key, seq_key, hist, dedup, srv_key, epoch_at(candidate, i), server_id)
    st.seq, st.srv, st.checked_srv, st.new_set, st.renew = 0, server_id, true, true, true
  end
  st.ready = true
end

-- This batch's earlier message of room `st` under dedup id `id`, as its answer's entries.
-- `todo` holds the messages stored so far, four entries each (`plan`).
local function earlier(todo, stored, ARGV, base, st, id)
  for j = 0, 4 * (stored - 1), 4 do
    if todo[j + 1] == st and ARGV[base + 4 * todo[j + 2] + 2] == id then
      return tonumber(todo[j + 3]), st.epoch, todo[j + 4]
    end
  end
end

-- send_batch's first pass for message `i`: the epoch's rules and its dedup id; its seq is
-- the room's next (`st.seq`), kept in Lua until the second pass writes it. A message to
-- store is appended to `todo` (room state, message index, seq digits, envelope). Returns
-- the count stored so far, then the message's three answer entries. A function of its own,
-- not a closure in send_batch: one made per call (and an upvalue per captured local) was
-- Lua's collector's largest share of a lone message's work.
local function plan(i, KEYS, ARGV, base, got, rooms, order, todo, stored, candidate, server_id, keep)
  local k, a, g = 6 * i, base + 4 * i, 4 * i
  local seq_key = KEYS[k + 1]
  if got[g + 3] then return stored, -1, math.max(redis.call('PTTL', KEYS[k + 6]), 0), false end
  local id = ARGV[a + 2]
  local st = rooms[seq_key]
  if not st then
    st = room_state(got[g + 1], got[g + 2], got[g + 4])
    st.k = k
    rooms[seq_key] = st
  end
  if not st.ready then
    local seq, epoch, envelope = settle(st, seq_key, KEYS[k + 2], KEYS[k + 3], KEYS[k + 4], KEYS[k + 5], id, candidate, i, server_id)
    if seq then return stored, seq, epoch, envelope end
  end
  if ARGV[a + 4] ~= '' then st.renew = true end

  local dedup = KEYS[k + 4]
  -- Formatted once, as an integer: Lua 5.1 turns a number into a string with a float's
  -- sprintf ('%.14g') each time it is used as one, three times the cost of '%d'.
  local digits = string.format('%d', st.seq + 1)
  if st.new_set then  -- the sentinel first: the set is born hashed
    redis.call('ZADD', dedup, 'inf', SENTINEL, digits, id)
    st.new_set = false
  elseif redis.call('ZADD', dedup, 'NX', digits, id) == 0 then
    local seq, epoch, envelope = earlier(todo, stored, ARGV, base, st, id)  -- sent earlier in this batch
    if seq then return stored, seq, epoch, envelope end
    local seen = redis.call('ZSCORE', dedup, id)
    envelope = tonumber(seen) > st.seq - keep and stored_under(KEYS[k + 2], seen)
    if envelope then return stored, tonumber(seen), st.epoch, envelope end
    -- Its message left the history: the id names this new message from now on.
    redis.call('ZADD', dedup, 'XX', digits, id)
  end
  if not st.checked_srv then
    st.checked_srv = true
    if server_id ~= '' and st.srv ~= server_id then
      -- Last written through another server (a replica promoted by a failover), the room
      -- may have lost its newest messages to asynchronous replication, so its seqs could
      -- repeat: a new epoch tells every node and client to follow the stream afresh. The
      -- stream itself stays, so a send retried across the failover is still found by its
      -- dedup id (above, before the switch).
      if st.srv then
        st.epoch = epoch_at(candidate, i)
        redis.call('SET', KEYS[k + 3], st.epoch)
      end
      redis.call('SET', KEYS[k + 5], server_id)
      st.srv, st.renew = server_id, true
    end
  end
  local seq = st.seq + 1
  st.seq = seq
  if not st.first then
    st.first = seq
    order[#order + 1] = st
  end
  local t = 4 * stored
  todo[t + 1], todo[t + 2], todo[t + 3] = st, i, digits
  todo[t + 4] = ARGV[a + 1] .. ',"seq":' .. digits .. ',"epoch":"' .. st.epoch .. '"}'
  return stored + 1, seq, st.epoch, false
end

-- Each message's own ARGV are ARGV[base + 4i + 1..4]: envelope_head (JSON without its closing
-- brace), dedup_id, channel, renew ('1': renew the room's TTLs, else ''); history_length,
-- room_ttl_ms, server_id (the master's replication id) and `candidate` are the batch's, the
-- same for every message of one server. A room that starts an epoch here takes `candidate`
-- (random) at the batch's first message, else `candidate` followed by its message's index:
-- every epoch is new while a message costs no random argument of its own.
-- Lua's own work was a third of Redis's per message (callgrind, 20 rooms), much of it its
-- collector's and tables growing one entry at a time: the common path makes no table per
-- message, one per room (its state), and its arrays at their full size at once (a
-- constructor from `unpack(ARGV, ...)`, which holds 4 + 4 * count entries: Lua 5.1 has no
-- table.new).
local function send_batch(KEYS, ARGV, count, base, length, room_ttl, server_id, candidate)
  local n = 4 * count
  local names = {unpack(ARGV, 1, ARCHIVE_KEY and n + 1 or n)}
  for i = 0, count - 1 do
    local k = 6 * i
    names[4 * i + 1], names[4 * i + 2], names[4 * i + 3], names[4 * i + 4] = KEYS[k + 3], KEYS[k + 5], KEYS[k + 6], KEYS[k + 1]
  end
  if ARCHIVE_KEY then names[n + 1] = ARCHIVE_KEY end
  local got = redis.call('MGET', unpack(names))
  local archive = ARCHIVE_KEY and archive_conf(got[n + 1]) or nil
  local keep = tonumber(length)
  local rooms, order = {}, {}
  local results, todo, stored = {unpack(ARGV, 1, 3 * count)}, {unpack(ARGV, 1, n)}, 0

  for i = 0, count - 1 do
    local r = 3 * i
    stored, results[r + 1], results[r + 2], results[r + 3] = plan(i, KEYS, ARGV, base, got, rooms, order, todo, stored, candidate, server_id, keep)
  end
  -- Second pass, a call per room: the seqs, before anything is stored under them (a batch
  -- stopped half-way by an error leaves a gap, never a seq given twice).
  for _, st in ipairs(order) do redis.call('INCRBY', KEYS[st.k + 1], string.format('%d', st.seq - st.first + 1)) end
  -- Third pass, in order: history, the archive's outbox, the channel.
  for j = 0, 4 * (stored - 1), 4 do
    local st, i, digits, envelope = todo[j + 1], todo[j + 2], todo[j + 3], todo[j + 4]
    local hist = KEYS[6 * i + 2]
    if not xadd(hist, true, digits, envelope) then
      xadd(hist, false, digits, envelope)  -- the stream was gone
      st.renew = true
    end
    if archive then redis.call('XADD', ARCHIVE_KEY .. ':outbox', 'MAXLEN', '~', archive.most, '*', 'e', envelope) end
    redis.call(PUBLISH, ARGV[base + 4 * i + 3], envelope)
  end
  for _, st in ipairs(order) do
    local k = st.k
    if math.floor(st.seq / 16) > math.floor((st.first - 1) / 16) then
      -- Every 16th seq. Ids and entries older than the window may linger until then:
      -- harmless, reads and dedup hits look no further back than the window (`xadd`).
      redis.call('ZREMRANGEBYSCORE', KEYS[k + 4], '-inf', st.seq - keep)
      redis.call('XTRIM', KEYS[k + 2], 'MAXLEN', '~', length)
    end
    if st.renew then
      pexpire(room_ttl, KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4], KEYS[k + 5])
      redis.call('ZADD', KEYS[k + 4], 'NX', 'inf', SENTINEL)  -- a set an older send.lua made
      keep_position(archive, KEYS[k + 3], KEYS[k + 1])
    end
  end
  return results
end
