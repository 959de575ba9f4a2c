-- Search: PostgreSQL full-text search over the message text. The 'simple' configuration
-- (no stemming, no stop words): chat is written in every language at once.
ALTER TABLE messages ADD COLUMN search tsvector GENERATED ALWAYS AS (to_tsvector('simple', body)) STORED;
CREATE INDEX messages_search ON messages USING gin (search);

-- Each user's direct conversations, whatever Redis forgot (list_directs).
CREATE TABLE directs (
    username text NOT NULL,
    room text NOT NULL,
    last_at timestamptz NOT NULL,
    PRIMARY KEY (username, room)
);
CREATE INDEX directs_recent ON directs (username, last_at DESC);

-- Users who asked to be forgotten: messages of theirs sent before this are never archived,
-- even when they were still in the outbox at the time of the erasure.
CREATE TABLE erasures (
    sender text PRIMARY KEY,
    erased_at timestamptz NOT NULL
);
