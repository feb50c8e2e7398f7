ALTER TABLE clips
    DROP COLUMN size_bytes,
    DROP COLUMN sha256,
    DROP COLUMN bitrate,
    DROP COLUMN updated_at;
