-- name: count_plays
-- Add a batch of plays in one atomic statement: $1 clip ids (distinct,
-- sorted so concurrent writers lock rows in one order), $2 plays per id.
-- Bumps play_count and last_played_at and the UTC day's tally together;
-- clips deleted meanwhile are skipped.
WITH batch AS (
    SELECT b.clip_id, b.plays
    FROM unnest($1::bigint[], $2::bigint[]) AS b(clip_id, plays)
    JOIN clips c ON c.id = b.clip_id
), daily AS (
    INSERT INTO clip_plays_daily (clip_id, day, plays)
    SELECT clip_id, (now() AT TIME ZONE 'UTC')::date, plays FROM batch
    ON CONFLICT (clip_id, day) DO UPDATE SET plays = clip_plays_daily.plays + EXCLUDED.plays
)
UPDATE clips
SET play_count = clips.play_count + batch.plays, last_played_at = now()
FROM batch
WHERE clips.id = batch.clip_id;
