-- Queries on the clips table (db/clips.py). Every query that returns clips
-- returns `clips.*`: the table, as migrations/ define it, is the one column
-- list, and tests/test_queries.py checks that each returns every field of
-- the API's Clip (schemas/clips.py).

-- name: get_clip
-- One clip, or no row.
SELECT clips.*
FROM clips
WHERE id = $1;

-- name: list_clips_newest
-- A page of clips, newest first. $1 genre, $2 ILIKE pattern (both optional),
-- $3/$4 the keyset cursor (created_at, id) of the last row already seen, $5 limit.
SELECT clips.*
FROM clips
WHERE ($1::text IS NULL OR genre = $1)
  AND ($2::text IS NULL OR title ILIKE $2 OR description ILIKE $2)
  AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4::bigint))
ORDER BY created_at DESC, id DESC
LIMIT $5;

-- name: list_clips_popular
-- A page of clips, most played first; cursor ($3, $4) = (play_count, id).
SELECT clips.*
FROM clips
WHERE ($1::text IS NULL OR genre = $1)
  AND ($2::text IS NULL OR title ILIKE $2 OR description ILIKE $2)
  AND ($3::bigint IS NULL OR (play_count, id) < ($3, $4::bigint))
ORDER BY play_count DESC, id DESC
LIMIT $5;

-- name: list_clips_title
-- A page of clips in title order, case ignored; cursor ($3, $4) = (title_key, id),
-- the key as PostgreSQL lowers it (Python's lower() differs on some letters).
SELECT clips.*, lower(title) AS title_key
FROM clips
WHERE ($1::text IS NULL OR genre = $1)
  AND ($2::text IS NULL OR title ILIKE $2 OR description ILIKE $2)
  AND ($3::text IS NULL OR (lower(title), id) > ($3, $4::bigint))
ORDER BY lower(title), id
LIMIT $5;

-- name: create_clip
-- Insert one clip and return it as get_clip does; $8-$10 (size, SHA-256,
-- bitrate) are known for uploaded audio only. $11 the jobs to queue for it
-- in the same statement ('preview', 'peaks'): a clip never exists without
-- them; with a preview job its preview is pending.
WITH clip AS (
    INSERT INTO clips (title, description, genre, duration_seconds, audio_url, media_path,
                       content_type, size_bytes, sha256, bitrate, preview_status)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10,
            CASE WHEN 'preview' = ANY($11::text[]) THEN 'pending' END)
    RETURNING clips.*
), queued AS (
    INSERT INTO jobs (kind, clip_id)
    SELECT kind, clip.id FROM clip, unnest($11::text[]) AS kind
)
SELECT * FROM clip;

-- name: get_clip_stats
-- One clip with its plays per UTC day for the last 30 days (zeros included,
-- oldest first), or no row.
SELECT c.*, daily.days, daily.plays
FROM clips c
CROSS JOIN LATERAL (
    SELECT array_agg(d.day::date ORDER BY d.day) AS days,
           array_agg(coalesce(p.plays, 0) ORDER BY d.day) AS plays
    FROM generate_series((now() AT TIME ZONE 'UTC')::date - 29,
                         (now() AT TIME ZONE 'UTC')::date, interval '1 day') AS d(day)
    LEFT JOIN clip_plays_daily p ON p.clip_id = c.id AND p.day = d.day::date
) AS daily
WHERE c.id = $1;

-- name: update_clip
-- Change the given fields of one clip ($2-$7; NULL keeps a field) if its
-- version (updated_at) still is $8. No row: the clip is gone or changed.
UPDATE clips
SET title = coalesce($2, title),
    description = coalesce($3, description),
    genre = coalesce($4, genre),
    duration_seconds = coalesce($5, duration_seconds),
    audio_url = coalesce($6, audio_url),
    content_type = coalesce($7, content_type),
    updated_at = clock_timestamp()
WHERE id = $1 AND updated_at = $8
RETURNING clips.*;

-- name: delete_clip
-- Delete one clip if its version still is $2; returns its stored file names
-- (the original's and the preview's).
DELETE FROM clips
WHERE id = $1 AND updated_at = $2
RETURNING id, media_path, preview_path;
