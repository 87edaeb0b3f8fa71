-- One row per build. Portable SQL: the same migration runs on SQLite and PostgreSQL.
-- Timestamps are Unix milliseconds; lists are JSON text.
CREATE TABLE builds (
    id          TEXT PRIMARY KEY,
    request_id  TEXT NOT NULL,
    state       TEXT NOT NULL,
    user_id     TEXT,
    repo        TEXT,
    git_ref     TEXT,
    request     TEXT NOT NULL,
    attempts    BIGINT NOT NULL DEFAULT 0,
    host        TEXT,
    commit_sha  TEXT,
    image       TEXT,
    digest      TEXT,
    tags        TEXT NOT NULL DEFAULT '[]',
    platforms   TEXT NOT NULL DEFAULT '[]',
    cached      BIGINT NOT NULL DEFAULT 0,
    fault       TEXT,
    error       TEXT,
    rebuild_of  TEXT,
    created_at  BIGINT NOT NULL,
    started_at  BIGINT,
    finished_at BIGINT,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX builds_newest ON builds (created_at, id);
CREATE INDEX builds_repo ON builds (repo, created_at);

-- Every state change, in order: the history shown by GET /v1/builds/{id}.
CREATE TABLE build_states (
    build_id TEXT NOT NULL,
    n        BIGINT NOT NULL,
    state    TEXT NOT NULL,
    attempt  BIGINT NOT NULL,
    host     TEXT,
    at       BIGINT NOT NULL,
    PRIMARY KEY (build_id, n)
);

-- Build output, redacted before it gets here; one row per line.
CREATE TABLE build_logs (
    build_id TEXT NOT NULL,
    n        BIGINT NOT NULL,
    line     TEXT NOT NULL,
    PRIMARY KEY (build_id, n)
);
