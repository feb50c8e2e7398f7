DROP INDEX clips_title;
DROP INDEX clips_genre_title;
CREATE INDEX clips_title ON clips (title, id);
CREATE INDEX clips_genre_title ON clips (genre, title, id);
