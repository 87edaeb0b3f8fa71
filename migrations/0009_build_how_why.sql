-- How a succeeded build's image was made (cached, incremental, full) and why, as image.updated
-- said it. Empty for builds recorded before.
ALTER TABLE builds ADD COLUMN how TEXT;
ALTER TABLE builds ADD COLUMN why TEXT;
