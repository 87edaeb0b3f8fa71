-- Webhook deliveries seen recently (a delivery id, or a digest of a signed body), so a replay
-- starts no second build on any replica. Rows older than webhooks.replay_window_secs are pruned.
CREATE TABLE webhook_deliveries (
    seen_key TEXT PRIMARY KEY,
    seen_at  BIGINT NOT NULL
);
CREATE INDEX webhook_deliveries_age ON webhook_deliveries (seen_at);
