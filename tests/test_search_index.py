"""Text search is served by an index, not a scan of the catalogue.

`q=` is `ILIKE '%…%'` on title and description: no B-tree serves it, so
migration 0004 adds pg_trgm GIN indexes where PostgreSQL has the extension.
The embedded development server has no contrib modules, so this runs on
Debian's PostgreSQL (`make test-deps` installs it; its contrib carries
pg_trgm, as do the official images and managed services): a cluster of
its own in a temporary directory, the real migrations, 20,000 clips, and
the planner's own choice (`EXPLAIN`) for the query the API sends.
"""

import asyncio
import glob
import shutil
import subprocess
import tempfile
from pathlib import Path

import asyncpg
import pytest

from db import migrate
from db.queries import SQL
from tests.support import free_port

DEBIAN_BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))


def as_postgres(*command: object) -> None:
    subprocess.run(
        ["runuser", "-u", "postgres", "--", *map(str, command)],
        check=True,
        capture_output=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def contrib_server_url():
    """A Debian PostgreSQL cluster (with contrib) of our own, on a socket."""
    if not DEBIAN_BIN or shutil.which("runuser") is None:
        pytest.skip("Debian's postgresql is not installed: run `make test-deps`")
    bin_dir = Path(DEBIAN_BIN[-1])
    directory = Path(tempfile.mkdtemp(prefix="clips-test-contrib-"))
    shutil.chown(directory, "postgres")
    data, port = directory / "data", free_port()
    as_postgres(bin_dir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8")
    as_postgres(
        bin_dir / "pg_ctl", "-D", data, "-w", "-l", directory / "log",
        "-o", f"-h '' -k {directory} -p {port}", "start",
    )  # fmt: skip
    try:
        yield f"postgresql://postgres@/postgres?host={directory}&port={port}"
    finally:
        as_postgres(bin_dir / "pg_ctl", "-D", data, "-m", "fast", "stop")
        shutil.rmtree(directory, ignore_errors=True)


async def plan(url: str, query: str, *args: object) -> str:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(f"EXPLAIN {query}", *args)
    finally:
        await conn.close()
    return "\n".join(row[0] for row in rows)


async def test_search_uses_the_trigram_indexes(contrib_server_url):
    await asyncio.to_thread(migrate.apply, contrib_server_url)
    conn = await asyncpg.connect(contrib_server_url)
    try:
        indexes = await conn.fetch("SELECT indexname FROM pg_indexes WHERE tablename = 'clips'")
        assert {"clips_title_trgm", "clips_description_trgm"} <= {r[0] for r in indexes}
        await conn.execute(
            """INSERT INTO clips (title, description, genre, duration_seconds, audio_url,
                                  content_type)
               SELECT 'Clip ' || md5(n::text), 'About ' || md5((n * 7)::text), 'rock', 30,
                      'https://cdn.example.com/' || n || '.mp3', 'audio/mpeg'
               FROM generate_series(1, 20000) AS n"""
        )
        # As autovacuum leaves it: new rows moved from GIN's pending list
        # into the index proper, statistics current.
        await conn.execute("VACUUM ANALYZE clips")
    finally:
        await conn.close()

    # What GET /clips?q=needle sends: $2 is the escaped pattern.
    query = SQL["list_clips_newest"]
    explained = await plan(contrib_server_url, query, None, "%needle%", None, None, 51)
    assert "clips_title_trgm" in explained, explained
    assert "clips_description_trgm" in explained, explained
    assert "Seq Scan" not in explained, explained


async def test_without_pg_trgm_the_migration_applies_and_search_still_works(client, make_clip):
    """The embedded server has no pg_trgm: the schema is complete, and `q=`
    answers by scanning."""
    await make_clip(title="A needle in here", audio_url="https://cdn.example.invalid/a.mp3")
    await make_clip(title="Nothing", audio_url="https://cdn.example.invalid/b.mp3")
    found = await (await client.get("/clips?q=needle")).json()
    assert [clip["title"] for clip in found] == ["A needle in here"]
    assert (await client.get("/readyz")).status == 200
