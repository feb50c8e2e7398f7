-- The demo catalogue (db/seed.py).

-- name: seed_stored_clip
-- Insert a demo clip stored in MEDIA_DIR unless its file is already catalogued.
-- (NOT EXISTS rather than ON CONFLICT: a conflicting insert would still use
-- up an id, and every `make run` seeds again.) The unique index on
-- media_path still guards against a concurrent seed.
INSERT INTO clips (title, description, genre, duration_seconds, media_path, content_type)
SELECT $1, $2, $3, $4, $5, $6
WHERE NOT EXISTS (SELECT 1 FROM clips WHERE media_path = $5);

-- name: seed_remote_clip
-- Insert a demo clip with a remote URL unless one with that URL exists.
INSERT INTO clips (title, description, genre, duration_seconds, audio_url, content_type)
SELECT $1, $2, $3, $4, $5, $6
WHERE NOT EXISTS (SELECT 1 FROM clips WHERE audio_url = $5);
