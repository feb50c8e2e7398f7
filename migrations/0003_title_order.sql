-- Title order ignores case: "apple" before "Zebra", whatever the collation.
-- depends: 0002_uploads

DROP INDEX clips_title;
DROP INDEX clips_genre_title;
CREATE INDEX clips_title ON clips (lower(title), id);
CREATE INDEX clips_genre_title ON clips (genre, lower(title), id);
