-- The list filters of GET /v1/builds, each walked newest first.
CREATE INDEX builds_user ON builds (user_id, created_at);
CREATE INDEX builds_state ON builds (state, created_at);
