-- Artifacts of a build (the request's `artifacts`, exported from the image after its push): one
-- row per name and platform, each an OCI artifact manifest in the image's repository.
-- Timestamps are Unix milliseconds, like builds.
CREATE TABLE build_artifacts (
    build_id    TEXT NOT NULL,
    name        TEXT NOT NULL,
    platform    TEXT NOT NULL,
    path        TEXT NOT NULL,
    digest      TEXT NOT NULL,
    blob_digest TEXT NOT NULL,
    size        BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (build_id, name, platform)
);
-- GET /v1/artifacts: the newest artifact of a name, joined to its build's repo and ref.
CREATE INDEX build_artifacts_name ON build_artifacts (name, created_at);
