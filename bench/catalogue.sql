-- name: bench_seed_clips
-- The benchmark catalogue in one statement (bench/catalogue.py): $1 clips
-- over $2 genres; odd clips remote at $3 (the origin's base URL) || file
-- name, even ones stored in MEDIA_DIR under a name of their own; one in five
-- of each is the big file $4, the rest the small file $5. Play counts and
-- ages vary so that "popular" and "newest" pages walk real index ranges.
INSERT INTO clips (title, description, genre, duration_seconds, audio_url, media_path,
                   content_type, play_count, created_at)
SELECT format('Bench clip %s', n),
       format('Clip %s of the benchmark catalogue: synthetic bytes of a real size.', n),
       format('genre-%s', lpad((n % $2::int + 1)::text, 2, '0')),
       CASE WHEN source.big THEN 320.0 ELSE 32.0 END,
       CASE WHEN n % 2 = 1 THEN $3::text || source.file END,
       CASE WHEN n % 2 = 0 THEN format('stored-%s-%s', n, source.file) END,
       'audio/mpeg',
       (n * 7919) % 100000,
       now() - n * interval '1 minute'
FROM generate_series(1, $1::int) AS n
CROSS JOIN LATERAL (
    SELECT n % 10 IN (1, 2) AS big,
           CASE WHEN n % 10 IN (1, 2) THEN $4::text ELSE $5::text END AS file
) AS source
RETURNING id, genre, audio_url, media_path;

-- name: bench_repoint_clips
-- Give clips $1 the audio URLs $2 (same order): the HTTPS clip, and the
-- cold clips whose URLs differ so that no cache, by clip or by URL, has
-- seen them before.
UPDATE clips SET audio_url = repointed.url
FROM unnest($1::bigint[], $2::text[]) AS repointed(id, url)
WHERE clips.id = repointed.id;

-- name: bench_sum_plays
-- Plays of clips $1 together (the cold clips of the first-byte scenario).
SELECT coalesce(sum(play_count), 0)::bigint FROM clips WHERE id = ANY($1::bigint[]);
