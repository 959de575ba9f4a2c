-- Several messages in one call (send_one.lua's send_batch), for any rooms of one server:
-- each message's 6 KEYS and 7 ARGV, one after the other. One EVALSHA per batch instead of
-- one per message: the call's own cost (parsing, the script's set-up, the reply) is paid
-- once, and so is the MGET (issue 27). Returns one answer per message, in order. Not on a
-- Cluster, where a call's keys must share a slot.
return send_batch(KEYS, ARGV, #KEYS / 6)
