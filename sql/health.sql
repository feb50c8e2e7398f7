-- name: applied_migrations
-- The ids of the yoyo migrations applied to this database.
SELECT migration_id FROM _yoyo_migration;
