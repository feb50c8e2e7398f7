-- The demo catalogue (db/seed.py).

-- name: seed_stored_clip
-- Insert a demo clip stored in MEDIA_DIR unless its file is already catalogued.
-- (NOT EXISTS rather than ON CONFLICT: a conflicting insert would still use
-- up an id, and every `make run` seeds again.) The unique index on
-- media_path still guards against a concurrent seed. Its file's size,
-- SHA-256 and bitrate are recorded as an upload's are.
INSERT INTO clips (title, description, genre, duration_seconds, media_path, content_type,
                   size_bytes, sha256, bitrate)
SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9
WHERE NOT EXISTS (SELECT 1 FROM clips WHERE media_path = $5);

-- name: seed_stored_facts
-- Record the size, SHA-256 and bitrate of a demo clip catalogued without them
-- (seeded before they were recorded); a clip that has them is left alone.
UPDATE clips SET size_bytes = $2, sha256 = $3, bitrate = $4, updated_at = clock_timestamp()
WHERE media_path = $1 AND sha256 IS NULL;

-- name: seed_remote_clip
-- Insert a demo clip with a remote URL unless one with that URL exists.
INSERT INTO clips (title, description, genre, duration_seconds, audio_url, content_type)
SELECT $1, $2, $3, $4, $5, $6
WHERE NOT EXISTS (SELECT 1 FROM clips WHERE audio_url = $5);
