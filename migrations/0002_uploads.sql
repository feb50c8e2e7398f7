-- Facts about uploaded audio, and a version of each clip's metadata for
-- optimistic concurrency (If-Match on PATCH and DELETE).
-- depends: 0001_clips

ALTER TABLE clips
    ADD COLUMN size_bytes bigint CHECK (size_bytes > 0),
    ADD COLUMN sha256     text CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    ADD COLUMN bitrate    integer CHECK (bitrate > 0),
    ADD COLUMN updated_at timestamptz NOT NULL DEFAULT clock_timestamp();
