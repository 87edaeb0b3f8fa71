-- Cached answers and incremental bases are trusted only when their digest is a recorded
-- success (store::RecordedImages): one lookup per cached answer.
CREATE INDEX builds_digest ON builds (digest, image);
