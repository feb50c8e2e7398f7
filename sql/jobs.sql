-- The job queue (db/jobs.py, run by jobs/): previews and peaks of clips.

-- name: claim_job
-- Claim the oldest due job: queued and due, or running under a lease that
-- ran out (its process died or hung). SKIP LOCKED: concurrent claimers
-- each get a different row, never wait for one another. $1 the new claim's
-- token, $2 lease seconds, $3 the claimer (host:pid). Returns the job with
-- the clip's source, or no row.
WITH next AS (
    SELECT id
    FROM jobs
    WHERE state IN ('queued', 'running')
      AND run_after <= clock_timestamp()
      AND (state = 'queued' OR lease_until < clock_timestamp())
    ORDER BY run_after, id
    LIMIT 1
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE jobs
    SET state = 'running', claim = $1, attempts = jobs.attempts + 1,
        lease_until = clock_timestamp() + make_interval(secs => $2), worker = $3
    FROM next
    WHERE jobs.id = next.id
    RETURNING jobs.*
)
SELECT claimed.id, claimed.kind, claimed.clip_id, claimed.attempts, claimed.claim,
       c.media_path, c.audio_url, c.content_type, c.duration_seconds
FROM claimed
JOIN clips c ON c.id = claimed.clip_id;

-- name: renew_lease
-- Keep a claim alive for $3 more seconds; no row: the claim was lost.
UPDATE jobs SET lease_until = clock_timestamp() + make_interval(secs => $3)
WHERE id = $1 AND claim = $2
RETURNING id;

-- name: release_job
-- Give a claimed job back untried (the process is stopping): queued again,
-- due now, the attempt not counted.
UPDATE jobs
SET state = 'queued', claim = NULL, lease_until = NULL, attempts = greatest(attempts - 1, 0)
WHERE id = $1 AND claim = $2
RETURNING id;

-- name: retry_job
-- The attempt failed and may be retried after $3 seconds; $4 why.
UPDATE jobs
SET state = 'queued', claim = NULL, lease_until = NULL, last_error = left($4, 500),
    run_after = clock_timestamp() + make_interval(secs => $3)
WHERE id = $1 AND claim = $2
RETURNING id;

-- name: fail_job
-- The job failed for good ($3 why). A preview job marks the clip's preview
-- failed with the reason; the clip itself is untouched and plays its original.
WITH failed AS (
    UPDATE jobs
    SET state = 'failed', claim = NULL, lease_until = NULL, last_error = left($3, 500),
        finished_at = clock_timestamp()
    WHERE id = $1 AND claim = $2
    RETURNING kind, clip_id
), clip AS (
    UPDATE clips SET preview_status = 'failed', preview_error = left($3, 500)
    FROM failed
    WHERE clips.id = failed.clip_id AND failed.kind = 'preview'
)
SELECT kind FROM failed;

-- name: finish_preview
-- The preview is made: record it on the clip ($3 file, $4 type, $5 size,
-- $6 bitrate) and close the job, if the claim still holds. No row: it does
-- not (taken over, or the clip deleted) and the caller removes the file.
WITH done AS (
    UPDATE jobs
    SET state = 'done', claim = NULL, lease_until = NULL, last_error = NULL,
        finished_at = clock_timestamp()
    WHERE id = $1 AND claim = $2
    RETURNING clip_id
)
UPDATE clips
SET preview_status = 'ready', preview_path = $3, preview_content_type = $4,
    preview_size_bytes = $5, preview_bitrate = $6, preview_error = NULL
FROM done
WHERE clips.id = done.clip_id
RETURNING clips.id;

-- name: finish_peaks
-- The peaks are computed: store them ($3 sample rate, $4 samples per pixel,
-- $5 data) and close the job, if the claim still holds. No row: it does not.
WITH done AS (
    UPDATE jobs
    SET state = 'done', claim = NULL, lease_until = NULL, last_error = NULL,
        finished_at = clock_timestamp()
    WHERE id = $1 AND claim = $2
    RETURNING clip_id
)
INSERT INTO clip_peaks (clip_id, sample_rate, samples_per_pixel, data)
SELECT clip_id, $3, $4, $5 FROM done
ON CONFLICT (clip_id) DO UPDATE
SET sample_rate = EXCLUDED.sample_rate, samples_per_pixel = EXCLUDED.samples_per_pixel,
    data = EXCLUDED.data, computed_at = clock_timestamp()
RETURNING clip_id;

-- name: queue_peaks
-- Compute a clip's peaks again (its audio_url changed): the old ones go,
-- and its peaks job is queued anew, due now.
WITH gone AS (
    DELETE FROM clip_peaks WHERE clip_id = $1
)
INSERT INTO jobs (kind, clip_id) VALUES ('peaks', $1)
ON CONFLICT (clip_id, kind) DO UPDATE
SET state = 'queued', attempts = 0, run_after = clock_timestamp(), claim = NULL,
    lease_until = NULL, last_error = NULL, finished_at = NULL
RETURNING id;

-- name: queue_missing_jobs
-- Queue a preview for every stored clip that has none and peaks for every
-- clip without a peaks job (db/seed.py, after seeding).
WITH pending AS (
    UPDATE clips SET preview_status = 'pending'
    WHERE media_path IS NOT NULL AND preview_status IS NULL
    RETURNING id
), previews AS (
    INSERT INTO jobs (kind, clip_id) SELECT 'preview', id FROM pending
    ON CONFLICT (clip_id, kind) DO NOTHING
)
INSERT INTO jobs (kind, clip_id) SELECT 'peaks', id FROM clips
ON CONFLICT (clip_id, kind) DO NOTHING;

-- name: get_peaks
-- A clip's peaks, or its peaks job's state when they are not computed yet
-- (no row: no such clip).
SELECT c.id AS clip_id, p.sample_rate, p.samples_per_pixel, p.data, p.computed_at,
       j.state AS job_state, j.last_error AS job_error
FROM clips c
LEFT JOIN clip_peaks p ON p.clip_id = c.id
LEFT JOIN jobs j ON j.clip_id = c.id AND j.kind = 'peaks'
WHERE c.id = $1;

-- name: job_states
-- Every job of a clip (tests, bench): kind, state, attempts, last_error, worker.
SELECT kind, state, attempts, last_error, worker FROM jobs WHERE clip_id = $1 ORDER BY kind;

-- name: lock_clip
-- Before a job's outcome is written: its clip's row, locked first, as
-- DELETE and PATCH lock it before the jobs rows they reach, so that the
-- two never wait for each other in a cycle (a deadlock). No row: deleted.
SELECT id FROM clips WHERE id = $1 FOR NO KEY UPDATE;
