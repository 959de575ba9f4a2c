-- Every message once, keyed as the stream keys it: (room, epoch, seq). The envelope is kept
-- as the JSON clients receive, so a page of history is sent without re-encoding.
CREATE TABLE messages (
    room text NOT NULL,
    epoch text NOT NULL,
    seq bigint NOT NULL,
    id text NOT NULL,
    sender text NOT NULL,
    body text NOT NULL,
    sent_at timestamptz NOT NULL,
    envelope text NOT NULL,
    PRIMARY KEY (room, epoch, seq)
);
-- History pages: a room's messages by seq, newest first.
CREATE INDEX messages_room_seq ON messages (room, seq DESC);
-- Retention deletes by age, erasure by sender.
CREATE INDEX messages_sent_at ON messages (sent_at);
CREATE INDEX messages_sender ON messages (sender);

-- Where each room's stream stands, for putting positions back into a Redis that lost them.
CREATE TABLE rooms (
    room text PRIMARY KEY,
    epoch text NOT NULL,
    seq bigint NOT NULL,
    last_at timestamptz NOT NULL
);
