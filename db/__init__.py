"""The PostgreSQL pool, owned by the application's lifecycle."""

import asyncio
from collections.abc import AsyncIterator

import asyncpg
from aiohttp import web

from settings import SETTINGS

POOL = web.AppKey("POOL", asyncpg.Pool)

# What a request sees when PostgreSQL is down, restarting or out of
# connections: the service answers 503 rather than an internal error.
UNAVAILABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,
    asyncpg.TooManyConnectionsError,
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
