-- Exactly one build per request across replicas: the replica running a build holds a lease on it
-- (owner token, Unix ms it lapses at), renewed while it builds and cleared with its outcome.
-- A cancel is a stored fact (Unix ms it was asked for), which the running replica polls.
ALTER TABLE builds ADD COLUMN lease_owner TEXT;
ALTER TABLE builds ADD COLUMN lease_until BIGINT;
ALTER TABLE builds ADD COLUMN cancel_requested_at BIGINT;
