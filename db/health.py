"""What the readiness probe asks PostgreSQL."""

import asyncpg
from asyncpg import Pool

from db.queries import SQL


async def applied_migrations(pool: Pool) -> frozenset[str]:
    """The ids of applied migrations; empty when yoyo never ran here."""
    try:
        rows = await pool.fetch(SQL["applied_migrations"], timeout=2)
    except asyncpg.UndefinedTableError:
        return frozenset()
    return frozenset(row["migration_id"] for row in rows)
