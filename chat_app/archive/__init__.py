"""The archive: every message, for good, in PostgreSQL (DATABASE_URL). Redis stays the live
window (seq, the recent history, presence); writers move each message from Redis's outbox to
the database behind the send, and history reads fall through to it (DESIGN.md "Archive")."""
