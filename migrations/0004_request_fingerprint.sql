-- The identity of the request that first used a build id (`BuildRequest::fingerprint`): a later
-- message under the same id is that request only if its fingerprint is equal. NULL for records
-- written before this column and for rejected requests, which never parsed.
ALTER TABLE builds ADD COLUMN fingerprint TEXT;
