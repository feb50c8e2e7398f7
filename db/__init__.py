"""The PostgreSQL pool, owned by the application's lifecycle."""

import asyncio
from collections.abc import AsyncIterator

import asyncpg
from aiohttp import web

from settings import SETTINGS

POOL = web.AppKey("POOL", asyncpg.Pool)

# The database is away, not the request wrong: down, restarting, out of
# connections, or answering a (re)connect with "database gone" (3D000),
# "login refused" (28xxx), "session ended by an administrator or a crash"
# (57xxx) or "out of resources" (53xxx). Requests answer 503; streams of
# clips already known keep playing (db/clip_cache.py).
UNAVAILABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InvalidCatalogNameError,
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.OperatorInterventionError,
    asyncpg.InsufficientResourcesError,
)


async def keep_session(connection: asyncpg.Connection) -> None:
    """Reset nothing when a connection returns to the pool. The service sets
    no session state (no SET, LISTEN, advisory locks or open transactions),
    so asyncpg's default reset query would only cost a round trip per
    request."""


async def pool_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    async with asyncpg.create_pool(
        settings.database_url,
        min_size=min(settings.db_pool_min, settings.db_pool_max),
        max_size=settings.db_pool_max,
        timeout=settings.db_acquire_timeout,
        command_timeout=settings.db_query_timeout,
        statement_cache_size=100 if settings.db_statement_cache else 0,
        reset=keep_session,
    ) as pool:
        app[POOL] = pool
        yield
