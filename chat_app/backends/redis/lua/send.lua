-- One message (send_batch.lua): a batch of one, with send_many.lua's KEYS and ARGV (its
-- header): KEYS seq, hist, epoch, dedup, srv, ban; ARGV history_length, room_ttl_ms,
-- server_id, candidate_epoch, envelope_head, dedup_id, channel, renew. Its answer is the
-- message's three entries.
return send_batch(KEYS, ARGV, 1, 4, ARGV[1], ARGV[2], ARGV[3], ARGV[4])
