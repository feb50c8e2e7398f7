"""What the readiness probe asks PostgreSQL."""

import asyncio

import asyncpg
from asyncpg import Pool

from db import translated
from db.queries import SQL

# Seconds the probe waits for a connection and the answer, together: an
# orchestrator's probe must get an answer, not a hang behind a full pool.
PROBE_TIMEOUT = 2.0


@translated
async def applied_migrations(pool: Pool) -> frozenset[str]:
    """The ids of applied migrations; empty when yoyo never ran here.
    Raises DatabaseUnavailable when PostgreSQL does not answer in time."""
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            rows = await pool.fetch(SQL["applied_migrations"])
    except asyncpg.UndefinedTableError:
        return frozenset()
    return frozenset(row["migration_id"] for row in rows)
