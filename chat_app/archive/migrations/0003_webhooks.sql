-- Webhooks (WEBHOOK_URL): events written in the transaction that archives what they tell of,
-- then delivered by a sender on some node. A row stays until its receiver answered 2xx
-- (then it is deleted) or every try failed (state 'failed': kept for the operator's replay).
CREATE TABLE webhook_outbox (
    id bigserial PRIMARY KEY,
    webhook_id text NOT NULL UNIQUE,  -- the stable `webhook-id` a receiver dedupes by
    room text NOT NULL,               -- events of one room go out in order ...
    seq bigint NOT NULL,              -- ... of (seq, id): a message's deletion after its creation
    type text NOT NULL,
    body text NOT NULL,               -- the JSON sent, signed afresh at each try
    state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'failed')),
    attempts integer NOT NULL DEFAULT 0,
    next_at timestamptz NOT NULL DEFAULT now(),  -- due then; while a sender holds it, its lease
    last_error text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_outbox_pending ON webhook_outbox (room, seq, id) WHERE state = 'pending';
CREATE INDEX webhook_outbox_failed ON webhook_outbox (id) WHERE state = 'failed';
