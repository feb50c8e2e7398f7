-- The clip catalogue and its per-day play tally.
-- depends:

CREATE TABLE clips (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    title            text NOT NULL CHECK (char_length(title) BETWEEN 1 AND 200),
    description      text NOT NULL DEFAULT '' CHECK (char_length(description) <= 2000),
    genre            text NOT NULL CHECK (genre ~ '^[a-z0-9]+(-[a-z0-9]+)*$' AND char_length(genre) <= 40),
    duration_seconds double precision NOT NULL CHECK (duration_seconds > 0 AND duration_seconds <= 86400),
    -- Exactly one source: a remote URL, or a file name inside MEDIA_DIR.
    audio_url        text CHECK (audio_url ~ '^https?://' AND char_length(audio_url) <= 2048),
    media_path       text CHECK (media_path ~ '^[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}$'),
    content_type     text NOT NULL CHECK (content_type ~ '^audio/[a-z0-9.+-]+$'),
    play_count       bigint NOT NULL DEFAULT 0 CHECK (play_count >= 0),
    last_played_at   timestamptz,
    created_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    CHECK ((audio_url IS NULL) <> (media_path IS NULL))
);

CREATE UNIQUE INDEX clips_media_path_key ON clips (media_path) WHERE media_path IS NOT NULL;
-- One index per sort order of GET /clips, with and without a genre filter.
CREATE INDEX clips_newest ON clips (created_at DESC, id DESC);
CREATE INDEX clips_popular ON clips (play_count DESC, id DESC);
CREATE INDEX clips_title ON clips (title, id);
CREATE INDEX clips_genre_newest ON clips (genre, created_at DESC, id DESC);
CREATE INDEX clips_genre_popular ON clips (genre, play_count DESC, id DESC);
CREATE INDEX clips_genre_title ON clips (genre, title, id);

CREATE TABLE clip_plays_daily (
    clip_id bigint NOT NULL REFERENCES clips (id) ON DELETE CASCADE,
    day     date NOT NULL,
    plays   bigint NOT NULL CHECK (plays > 0),
    PRIMARY KEY (clip_id, day)
);
