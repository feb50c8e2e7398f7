"""What the readiness probe asks PostgreSQL."""

import asyncio

import asyncpg
from asyncpg import Pool

from db import UNAVAILABLE
from db.queries import SQL

# The database is away, not the request wrong: db.UNAVAILABLE, plus what
# PostgreSQL answers on (re)connect when the database was dropped or renamed
# (3D000), the role or password changed (28xxx), an administrator or a crash
# ended the session (57xxx), or it ran out of resources (53xxx). Without
# these, a pool reconnecting to a dropped database answered 500.
UNREACHABLE = (
    *UNAVAILABLE,
    asyncpg.InvalidCatalogNameError,
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.OperatorInterventionError,
    asyncpg.InsufficientResourcesError,
)

# Seconds the probe waits for a connection and the answer, together: an
# orchestrator's probe must get an answer, not a hang behind a full pool.
PROBE_TIMEOUT = 2.0


async def applied_migrations(pool: Pool) -> frozenset[str]:
    """The ids of applied migrations; empty when yoyo never ran here."""
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            rows = await pool.fetch(SQL["applied_migrations"])
    except asyncpg.UndefinedTableError:
        return frozenset()
    return frozenset(row["migration_id"] for row in rows)
