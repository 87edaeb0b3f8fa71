-- Notifications to HTTP webhooks (notify.webhooks), written in the transaction of the state change
-- whose event they carry, one row per webhook that wants the event, deleted once delivered or
-- given up. event_id is the Idempotency-Key every attempt sends; target names the webhook (the
-- start of the SHA-256 of its URL, which is not stored). A deliverer claims a due row by setting
-- claim_token and claim_until (Unix ms); a claim that lapsed (its process died) is taken again.
CREATE TABLE notification_outbox (
    id          TEXT PRIMARY KEY,
    event_id    TEXT NOT NULL,
    target      TEXT NOT NULL,
    event       TEXT NOT NULL,
    build_id    TEXT NOT NULL,
    body        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    attempts    BIGINT NOT NULL DEFAULT 0,
    next_at     BIGINT NOT NULL,
    claim_token TEXT,
    claim_until BIGINT,
    last_error  TEXT
);
CREATE INDEX notification_outbox_due ON notification_outbox (next_at);
