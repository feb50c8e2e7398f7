-- Text search (`GET /clips?q=`) served by trigram indexes: `ILIKE '%words%'`
-- on title or description uses them instead of reading every row.
-- pg_trgm ships with PostgreSQL's contrib (Debian's packages, the official
-- images, managed services); where it is not installed (the embedded
-- development server) the search still works, by scanning.
-- depends: 0003_title_order

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm') THEN
        CREATE EXTENSION IF NOT EXISTS pg_trgm;
        CREATE INDEX clips_title_trgm ON clips USING gin (title gin_trgm_ops);
        CREATE INDEX clips_description_trgm ON clips USING gin (description gin_trgm_ops);
    END IF;
END
$$;
