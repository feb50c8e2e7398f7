"""The data layer: the PostgreSQL pool, owned by the application's lifecycle,
and the one error type its callers see.

Imports only itself and `settings`. Every query function of a table module
(db/clips.py, db/plays.py, db/health.py) is wrapped by `@translated`, so a
caller never meets an asyncpg exception, and an `OSError` from elsewhere
(a disk, the upstream guard) can never pass for a database outage.
"""

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import ParamSpec, TypeVar

import asyncpg
import psycopg
from aiohttp import web

from settings import SETTINGS

POOL = web.AppKey("POOL", asyncpg.Pool)

# The database is away, not the request wrong: down, restarting, out of
# connections, or answering a (re)connect with "database gone" (3D000),
# "login refused" (28xxx), "session ended by an administrator or a crash"
# (57xxx) or "out of resources" (53xxx). Inside a query function, an OSError
# or a timeout can only be the connection to PostgreSQL.
_UNAVAILABLE = (
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


# What can stop the server from starting on the database's side (migrating
# with psycopg, opening the pool with asyncpg), besides an OSError.
STARTUP_ERRORS = (asyncpg.PostgresError, psycopg.Error)


class DatabaseError(Exception):
    """A query failed; `__cause__` is the driver's exception."""

    kind = "query"


class DatabaseUnavailable(DatabaseError):
    """PostgreSQL cannot be reached or refuses work right now: requests answer
    503; streams of clips already known keep playing (db/clip_cache.py)."""

    kind = "unavailable"


P = ParamSpec("P")
R = TypeVar("R")


def translated(query: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Decorate a query function: driver errors leave it as DatabaseError or
    DatabaseUnavailable, with the original as `__cause__`."""

    @functools.wraps(query)
    async def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await query(*args, **kwargs)
        except _UNAVAILABLE as error:
            raise DatabaseUnavailable(f"{type(error).__name__}: {error}") from error
        except asyncpg.PostgresError as error:
            raise DatabaseError(f"{type(error).__name__}: {error}") from error

    return run


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
