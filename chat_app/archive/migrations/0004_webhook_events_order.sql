-- Webhook events that are not messages (room.occupied, room.vacated, member.joined,
-- member.left: decided by Redis's presence scripts, written to the archive's outbox) carry
-- the room's last seq then, and `pos`, their outbox entry's place in the stream (ms * 10^6 +
-- n), which orders them among the room's events of one seq: two writers on two nodes insert
-- them in whatever order their batches commit, so the row's id cannot. A message's events
-- have none and go first among their seq's (a room's seq was S only after message S).
ALTER TABLE webhook_outbox ADD COLUMN pos bigint;
DROP INDEX webhook_outbox_pending;
CREATE INDEX webhook_outbox_pending ON webhook_outbox (room, seq, pos NULLS FIRST, id) WHERE state = 'pending';
