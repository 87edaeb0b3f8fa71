-- The base image of every stage of a succeeded build, as the engine resolved and pulled it (a
-- cached or incremental answer: those of the image it reused). `reference` is the full name
-- (registry/repository:tag) a base update is matched against; is_final is 1 for the stage the
-- image is; `also` the image's other manifest digests, space-separated (see events::BaseImage).
CREATE TABLE build_bases (
    build_id  TEXT NOT NULL,
    stage     TEXT NOT NULL,
    is_final  BIGINT NOT NULL,
    written   TEXT NOT NULL,
    reference TEXT NOT NULL,
    digest    TEXT NOT NULL,
    also      TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (build_id, stage)
);
CREATE INDEX build_bases_reference ON build_bases (reference);
-- A configuration's newest image: the newest succeeded build with its fingerprint.
CREATE INDEX builds_fingerprint ON builds (fingerprint, finished_at);
-- One decision per (base reference, digest it moved to), whichever replica sees it first: the
-- replica whose insert (or whose take-over of a lapsed claim) wins publishes the rebuilds, then
-- sets done_at.
CREATE TABLE base_moves (
    reference   TEXT NOT NULL,
    digest      TEXT NOT NULL,
    seen_via    TEXT NOT NULL,
    host        TEXT NOT NULL,
    decided_at  BIGINT NOT NULL,
    claim_until BIGINT NOT NULL,
    done_at     BIGINT,
    rebuilds    BIGINT,
    PRIMARY KEY (reference, digest)
);
