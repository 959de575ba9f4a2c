-- Several messages in one call (send_batch.lua), for any rooms of one server.
-- KEYS: each message's 6 (as send.lua's), one after the other. ARGV: history_length,
-- room_ttl_ms, server_id, candidate_epoch (the batch's: one server, one deployment), then
-- each message's envelope_head, dedup_id, channel, renew. One script call per batch instead
-- of one per message: the call's own cost (parsing, the script's set-up, the reply) is paid once,
-- and so is the MGET; the shared arguments are sent once, not per message (issue 27). Returns
-- each message's answer (three entries) in order, in one flat list. Not on a Cluster, where a
-- call's keys must share a slot.
return send_batch(KEYS, ARGV, #KEYS / 6, 4, ARGV[1], ARGV[2], ARGV[3], ARGV[4])
