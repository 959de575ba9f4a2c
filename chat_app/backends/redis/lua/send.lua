-- One message (send_batch.lua). KEYS: seq, hist, epoch, dedup, srv, ban. ARGV:
-- envelope_head, dedup_id, candidate_epoch, history_length, room_ttl_ms, channel, server_id.
return send_batch(KEYS, {ARGV[1], ARGV[2], ARGV[3], ARGV[6]}, 1, 0, ARGV[4], ARGV[5], ARGV[7])[1]
