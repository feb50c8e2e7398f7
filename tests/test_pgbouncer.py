"""The app behind PgBouncer in transaction mode (Debian's `pgbouncer`), as
the README's connection budget suggests once replicas x WORKERS x
DB_POOL_MAX outgrows max_connections.

PgBouncer listens on a loopback port, checks the app's password
(scram-sha-256 from its auth file) and hands each transaction one of a few
server connections to the test PostgreSQL. Two replicas (real `server.py`
processes, DB_POOL_MAX 10 each) share those few connections under
concurrent plays and API writes: every answer is a success, every play and
write is in the database exactly. With asyncpg's statement cache on
(DB_STATEMENT_CACHE=true), the same setup answers 500s: a statement
prepared on one server connection is executed on another, as
STACK-NOTES.md and the README say.
"""

import asyncio
import os
import pwd
import shutil
import tempfile
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

import aiohttp
import asyncpg
import pytest

from tests.replicas import replicas
from tests.scrape import metric
from tests.support import free_port, wait_until

# Server connections PgBouncer opens per database and user: far fewer than
# the replicas' pools hold together (2 x DB_POOL_MAX 10).
SERVER_CONNECTIONS = 4
PASSWORD = "pgbouncer-test-password"


def pgbouncer_binary() -> str:
    found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")
    if found is None:
        pytest.skip("pgbouncer is not installed: run `make test-deps` (apt-get install pgbouncer)")
    return found


def unprivileged_user(backend_host: str) -> str | None:
    """PgBouncer refuses to run as root: the user it switches to (-u). For
    a unix socket, its directory's owner (the embedded server's is
    `pgserver`, reachable by no one else); else any unprivileged one."""
    if os.geteuid() != 0:
        return None
    if backend_host.startswith("/"):
        owner = Path(backend_host).stat().st_uid
        if owner != 0:
            return pwd.getpwuid(owner).pw_name
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    pytest.skip("running as root with no unprivileged user for pgbouncer to switch to")


def configure(directory: Path, database_url: str) -> tuple[str, str | None]:
    """pgbouncer.ini and its auth file in `directory`, in front of
    `database_url`'s server; returns the URL the app connects to through it
    (same database, a loopback port) and the user PgBouncer must run as."""
    parts = urlsplit(database_url)
    backend_host = parse_qs(parts.query).get("host", [parts.hostname])[0]
    database = parts.path.lstrip("/")
    role = parts.username or "postgres"
    password = parts.password or PASSWORD
    port = free_port()
    # Readable by the user PgBouncer runs as (pytest's tmp_path is root's only).
    directory.chmod(0o755)
    (directory / "userlist.txt").write_text(f'"{role}" "{password}"\n')
    (directory / "pgbouncer.ini").write_text(
        f"""[databases]
{database} = host={backend_host} port={parts.port or 5432} dbname={database}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {directory / "userlist.txt"}
pool_mode = transaction
default_pool_size = {SERVER_CONNECTIONS}
max_client_conn = 400
"""
    )
    for path in directory.iterdir():
        path.chmod(0o644)
    url = urlunsplit(("postgresql", f"{role}:{password}@127.0.0.1:{port}", f"/{database}", "", ""))
    return url, unprivileged_user(backend_host)


@pytest.fixture
async def pgbouncer(database_url):
    """A PgBouncer in transaction mode in front of `database_url`'s server;
    yields the URL the app connects to through it."""
    binary = pgbouncer_binary()
    directory = Path(tempfile.mkdtemp(prefix="clips-pgbouncer-"))
    try:
        url, user = configure(directory, database_url)
    except BaseException:  # a skip included
        shutil.rmtree(directory)
        raise
    log = directory / "pgbouncer.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            binary,
            *(["-u", user] if user else []),
            directory / "pgbouncer.ini",
            stdout=out,
            stderr=out,
        )
    try:

        async def answers() -> bool:
            assert process.returncode is None, log.read_text()
            try:
                connection = await asyncpg.connect(url, statement_cache_size=0, timeout=2)
            except (OSError, TimeoutError):
                return False
            try:
                return await connection.fetchval("SELECT 1") == 1
            finally:
                await connection.close()

        await wait_until(answers, "pgbouncer answering", seconds=10, details=log.read_text)
        yield url
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                async with asyncio.timeout(10):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
        shutil.rmtree(directory)


async def backend_connections(database_url: str) -> int:
    """Connections PostgreSQL holds to the test database, besides this one."""
    connection = await asyncpg.connect(database_url)
    try:
        return await connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await connection.close()


async def test_replicas_behind_pgbouncer_count_exactly_under_load(
    pgbouncer, database_url, origin, audio_dir, tmp_path
):
    plays, created, edited, deleted = 200, 40, 20, 10
    expected = (audio_dir / "small.mp3").read_bytes()
    async with (
        replicas(pgbouncer, tmp_path, count=2, DB_STATEMENT_CACHE="false") as pair,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=120)) as session,
    ):
        audio_url = str(origin.make_url("/audio/small.mp3"))
        body = {"title": "Busy", "genre": "rock", "duration_seconds": 20.0, "audio_url": audio_url}
        async with session.post(pair[0].url("/clips"), json=body) as response:
            assert response.status == 201, await response.text()
            played = (await response.json())["id"]

        async def listen(n: int) -> int:
            async with session.get(pair[n % 2].url(f"/clips/{played}/stream")) as response:
                assert await response.read() == expected
                return response.status

        async def create(n: int) -> int:
            clip = {**body, "title": f"New {n}"}
            async with session.post(pair[n % 2].url("/clips"), json=clip) as response:
                assert response.status == 201, await response.text()
                clip_id = (await response.json())["id"]
            if n < edited:  # then edit it through the other replica
                change = {"title": f"Edited {n}"}
                async with session.patch(
                    pair[1 - n % 2].url(f"/clips/{clip_id}"), json=change
                ) as r:
                    assert r.status == 200, await r.text()
            if n >= created - deleted:
                async with session.delete(pair[n % 2].url(f"/clips/{clip_id}")) as r:
                    assert r.status == 204, await r.text()
            return clip_id

        async def browse(n: int) -> int:
            async with session.get(pair[n % 2].url("/clips?sort=popular&limit=50")) as response:
                assert response.status == 200, await response.text()
                return response.status

        statuses, _, _ = await asyncio.gather(
            asyncio.gather(*(listen(n) for n in range(plays))),
            asyncio.gather(*(create(n) for n in range(created))),
            asyncio.gather(*(browse(n) for n in range(40))),
        )
        assert statuses == [200] * plays

        async def written() -> bool:
            async with session.get(pair[1].url(f"/clips/{played}")) as response:
                return (await response.json())["play_count"] == plays

        await wait_until(written, f"play_count reaching {plays}", seconds=10)

        # The replicas' pools hold more connections than PostgreSQL gave
        # PgBouncer: transactions shared them.
        pooled = 0
        for replica in pair:
            async with session.get(replica.url("/metrics")) as response:
                text = await response.text()
            pooled += metric(text, "clips_db_pool_connections")
            assert not [line for line in text.splitlines() if 'status="500"' in line], text
        assert pooled > SERVER_CONNECTIONS
        assert await backend_connections(database_url) <= SERVER_CONNECTIONS

    # What PostgreSQL holds, read directly (not through PgBouncer).
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch("SELECT id, title, play_count FROM clips ORDER BY id")
        daily = await connection.fetchval("SELECT sum(plays) FROM clip_plays_daily")
    finally:
        await connection.close()
    assert len(rows) == 1 + created - deleted
    assert rows[0]["play_count"] == plays and daily == plays
    titles = sorted(row["title"] for row in rows[1:])
    assert titles == sorted(
        [f"Edited {n}" for n in range(edited)] + [f"New {n}" for n in range(edited, 30)]
    )


async def test_the_statement_cache_behind_pgbouncer_answers_500s(pgbouncer, tmp_path):
    """Why DB_STATEMENT_CACHE=false is required there: with it on, asyncpg
    prepares a named statement on one server connection and PgBouncer runs
    the next transaction on another."""
    async with (
        replicas(pgbouncer, tmp_path, count=1, DB_STATEMENT_CACHE="true") as (replica,),
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=60)) as session,
    ):

        async def browse(n: int) -> int:
            async with session.get(replica.url(f"/clips?limit={1 + n % 50}")) as response:
                return response.status

        statuses = await asyncio.gather(*(browse(n) for n in range(200)))
        assert 500 in statuses, statuses
        assert set(statuses) <= {200, 500}
        log = replica.output()
        assert "prepared statement" in log and "does not exist" in log, log[-3000:]
