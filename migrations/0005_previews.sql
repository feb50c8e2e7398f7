-- Light previews and waveform peaks, made by durable jobs (jobs/).
-- Each stored clip gains a preview (a compressed copy in the media store) and
-- every clip its waveform peaks; both are made by rows of `jobs`, claimed
-- with SELECT ... FOR UPDATE SKIP LOCKED by any server process, under a
-- lease its runner keeps renewing (a process killed mid-job stops renewing:
-- the job is claimed again once the lease runs out).
-- depends: 0004_search

ALTER TABLE clips
    -- NULL: no preview (remote audio). pending until the job ends.
    ADD COLUMN preview_status       text CHECK (preview_status IN ('pending', 'ready', 'failed')),
    ADD COLUMN preview_path         text CHECK (preview_path ~ '^[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}$'),
    ADD COLUMN preview_content_type text CHECK (preview_content_type ~ '^audio/[a-z0-9.+-]+$'),
    ADD COLUMN preview_size_bytes   bigint CHECK (preview_size_bytes > 0),
    ADD COLUMN preview_bitrate      integer CHECK (preview_bitrate > 0),
    ADD COLUMN preview_error        text CHECK (char_length(preview_error) <= 500),
    ADD CHECK ((preview_status = 'ready') = (preview_path IS NOT NULL));

CREATE TABLE jobs (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('preview', 'peaks')),
    clip_id     bigint NOT NULL REFERENCES clips (id) ON DELETE CASCADE,
    state       text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'running', 'done', 'failed')),
    attempts    integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- Not claimed before this time (retries back off).
    run_after   timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- While running: the claim's token and how long it holds without renewal.
    claim       uuid,
    lease_until timestamptz,
    -- Which process holds or last held it (host:pid), for the operator.
    worker      text,
    last_error  text CHECK (char_length(last_error) <= 500),
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz,
    UNIQUE (clip_id, kind),
    CHECK ((state = 'running') = (claim IS NOT NULL AND lease_until IS NOT NULL))
);
-- What a claim scans: jobs that may be due, oldest first.
CREATE INDEX jobs_due ON jobs (run_after, id) WHERE state IN ('queued', 'running');

-- A clip's waveform: min/max pairs of 8-bit samples (audiowaveform's data,
-- one channel) at `samples_per_pixel`, the finest resolution served.
CREATE TABLE clip_peaks (
    clip_id           bigint PRIMARY KEY REFERENCES clips (id) ON DELETE CASCADE,
    sample_rate       integer NOT NULL CHECK (sample_rate > 0),
    samples_per_pixel integer NOT NULL CHECK (samples_per_pixel > 0),
    data              bytea NOT NULL CHECK (octet_length(data) % 2 = 0),
    computed_at       timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- The catalogue already stored gets its previews and peaks too.
UPDATE clips SET preview_status = 'pending' WHERE media_path IS NOT NULL;
INSERT INTO jobs (kind, clip_id) SELECT 'preview', id FROM clips WHERE media_path IS NOT NULL;
INSERT INTO jobs (kind, clip_id) SELECT 'peaks', id FROM clips;
