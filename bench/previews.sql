-- name: bench_jobs_ended
-- Per clip of $1: whether all its jobs ended, whether any failed, and when
-- the last ended (epoch seconds). bench/scenarios/previews.py polls it.
SELECT clip_id,
       bool_and(state IN ('done', 'failed')) AS ended,
       bool_or(state = 'failed') AS failed,
       extract(epoch FROM max(finished_at))::float8 AS at
FROM jobs
WHERE clip_id = ANY($1::bigint[])
GROUP BY clip_id;
