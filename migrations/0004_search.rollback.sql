DROP INDEX IF EXISTS clips_title_trgm;
DROP INDEX IF EXISTS clips_description_trgm;
