"""Schema migrations with yoyo: `python -m db.migrate [--rollback]`.

yoyo speaks psycopg 3 through a `postgresql+psycopg://` URL, while asyncpg
wants plain `postgresql://`: both come from the one DATABASE_URL.
"""

import argparse
import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
from aiohttp import web
from yoyo import get_backend, read_migrations

from settings import SETTINGS

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def yoyo_url(database_url: str) -> str:
    scheme, _, rest = database_url.partition("://")
    if scheme not in ("postgres", "postgresql"):
        raise ValueError(f"DATABASE_URL must start with postgresql://, not {scheme}://")
    return f"postgresql+psycopg://{rest}"


def migration_ids() -> frozenset[str]:
    """The ids of every migration the code expects to be applied."""
    return frozenset(m.id for m in read_migrations(str(MIGRATIONS_DIR)))


def apply(database_url: str) -> int:
    """Apply every pending migration, under yoyo's lock (replicas starting
    together wait for each other). Returns how many were applied."""
    backend = get_backend(yoyo_url(database_url))
    try:
        with backend.lock():
            pending = backend.to_apply(read_migrations(str(MIGRATIONS_DIR)))
            backend.apply_migrations(pending)
    finally:
        backend.connection.close()
    log.info("migrations applied (%d new)", len(pending))
    return len(pending)


def rollback(database_url: str) -> None:
    """Undo every applied migration, newest first."""
    backend = get_backend(yoyo_url(database_url))
    try:
        with backend.lock():
            backend.rollback_migrations(backend.to_rollback(read_migrations(str(MIGRATIONS_DIR))))
    finally:
        backend.connection.close()


# The migration ids this code needs applied, read from migrations/ when the
# app starts (the readiness probe compares them with the database's).
EXPECTED_MIGRATIONS = web.AppKey("EXPECTED_MIGRATIONS", frozenset)


async def migrate_ctx(app: web.Application) -> AsyncIterator[None]:
    """Apply pending migrations before the pool opens (MIGRATE_ON_START)."""
    settings = app[SETTINGS]
    app[EXPECTED_MIGRATIONS] = await asyncio.to_thread(migration_ids)
    if settings.migrate_on_start:
        await asyncio.to_thread(apply, settings.database_url)
    yield


def main() -> None:
    from db.embedded import database
    from settings import load_settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rollback", action="store_true", help="undo every migration")
    args = parser.parse_args()
    with database(load_settings()) as url:
        try:
            (rollback if args.rollback else apply)(url)
        except psycopg.OperationalError as error:
            # One line, like a bad setting: the first line of libpq's message
            # says which server refused and why.
            reason = str(error).strip().partition("\n")[0]
            raise SystemExit(f"migrate: cannot reach the database: {reason}") from None
        print("rolled back" if args.rollback else "migrations applied")


if __name__ == "__main__":
    main()
