"""Liveness and readiness, as an orchestrator's probes see them."""

import time
from urllib.parse import urlsplit

import asyncpg
from yoyo import get_backend, read_migrations

from db import migrate
from tests.support import read_problem


async def ready(client):
    started = time.monotonic()
    response = await client.get("/readyz")
    body = await response.json()
    return response, body, time.monotonic() - started


async def test_healthz_says_the_process_is_alive(client):
    response = await client.get("/healthz")
    assert response.status == 200
    assert await response.json() == {"status": "ok"}


async def test_readyz_is_200_on_a_migrated_database(client):
    response, body, _ = await ready(client)
    assert response.status == 200
    assert body == {"status": "ready", "migrations": len(migrate.migration_ids())}


async def test_readyz_is_503_when_no_migration_ran(make_client, settings, empty_database_url):
    client = await make_client(settings.changed({"database_url": empty_database_url}))
    response, body, _ = await ready(client)
    await read_problem(response, 503)
    assert all(m in body["detail"] for m in migrate.migration_ids())
    assert (await client.get("/healthz")).status == 200


async def test_readyz_is_503_naming_the_migrations_not_yet_applied(
    make_client, settings, empty_database_url
):
    migrations = read_migrations(str(migrate.MIGRATIONS_DIR))
    backend = get_backend(migrate.yoyo_url(empty_database_url))
    try:
        with backend.lock():  # the schema of the previous release
            backend.apply_migrations(backend.to_apply(migrations)[:-1])
    finally:
        backend.connection.close()
    client = await make_client(settings.changed({"database_url": empty_database_url}))
    response, body, _ = await ready(client)
    assert response.status == 503
    assert migrations[-1].id in body["detail"]
    assert migrations[0].id not in body["detail"]


async def test_migrate_on_start_makes_an_empty_database_ready(
    make_client, settings, empty_database_url
):
    client = await make_client(
        settings.changed({"database_url": empty_database_url, "migrate_on_start": True})
    )
    response, _, _ = await ready(client)
    assert response.status == 200
    assert (await client.get("/clips")).status == 200


async def test_readyz_is_503_soon_after_the_database_is_dropped(client, database_url, server_url):
    assert (await client.get("/clips")).status == 200  # the pool holds live connections
    name = urlsplit(database_url).path.lstrip("/")
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
    finally:
        await admin.close()

    for _ in range(2):  # the terminated connection, then a reconnect that fails
        response, _, elapsed = await ready(client)
        await read_problem(response, 503)
        assert response.headers["Retry-After"]
        assert elapsed < 3
    await read_problem(await client.get("/clips"), 503)
    assert (await client.get("/healthz")).status == 200


async def test_readyz_is_503_when_the_database_never_existed(make_client, settings, server_url):
    missing = urlsplit(server_url)._replace(path="/no_such_database").geturl()
    # DB_POOL_MIN=0: the app starts without connecting, as it would when
    # the database is created after the service.
    client = await make_client(settings.changed({"database_url": missing, "db_pool_min": 0}))
    response, body, elapsed = await ready(client)
    assert response.status == 503
    assert "unreachable" in body["detail"]
    assert elapsed < 3
    assert (await client.get("/clips/1")).status == 503


async def test_readyz_is_503_when_nothing_listens(make_client, settings, tmp_path):
    for url in (
        "postgresql://postgres@127.0.0.1:1/clips",  # a closed port
        f"postgresql://postgres@/clips?host={tmp_path}",  # a socket dir without a server
    ):
        client = await make_client(settings.changed({"database_url": url, "db_pool_min": 0}))
        response, _, elapsed = await ready(client)
        assert response.status == 503, url
        assert elapsed < 3
