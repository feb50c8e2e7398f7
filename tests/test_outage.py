"""PostgreSQL going away and coming back, with listeners in the middle."""

import asyncio
import time

import pytest

from db import POOL, clips, migrate
from db.embedded import start
from db.plays import PLAYS
from tests.scrape import metric
from tests.support import read_problem, wait_until


@pytest.fixture
async def own_server(tmp_path):
    """A PostgreSQL of this test's own, so stopping it disturbs nobody."""
    server = await asyncio.to_thread(start, tmp_path / "pg", "delete")
    await asyncio.to_thread(migrate.apply, server.get_uri())
    yield server
    await asyncio.to_thread(server.cleanup)


@pytest.fixture
async def outage_client(own_server, settings, make_client):
    return await make_client(
        settings.changed(
            {
                "database_url": own_server.get_uri(),
                "db_acquire_timeout": 1.0,
                "db_query_timeout": 1.0,
                # Every stream asks PostgreSQL first, falling back to what it
                # saw last only when the database is unreachable.
                "clip_cache_seconds": 0.0,
            }
        )
    )


async def listen(client, clip_id: int) -> int:
    response = await client.get(f"/clips/{clip_id}/stream")
    await response.read()
    return response.status


async def timed(request) -> tuple[float, object]:
    started = time.monotonic()
    response = await request
    await response.read()
    return time.monotonic() - started, response


async def test_outage_answers_503_keeps_playing_known_clips_and_loses_no_play(
    own_server, outage_client
):
    client = outage_client
    stored = await clips.create_clip(
        client.server.app[POOL],
        title="Through the outage",
        description="",
        genre="rock",
        duration_seconds=1.0,
        audio_url=None,
        media_path="small.mp3",
        content_type="audio/mpeg",
    )
    stored_id = stored["id"]
    assert [await listen(client, stored_id) for _ in range(3)] == [200] * 3  # before
    await client.server.app[PLAYS].flush()

    await asyncio.to_thread(own_server.stop)

    elapsed, listing = await timed(client.get("/clips"))
    await read_problem(listing, 503)
    assert listing.headers["Retry-After"]
    assert elapsed < 5  # bounded by DB_ACQUIRE_TIMEOUT / DB_QUERY_TIMEOUT, never hangs
    assert (await client.get("/readyz")).status == 503
    assert (await client.get("/healthz")).status == 200
    # A clip whose metadata this process has seen keeps playing; its plays wait.
    assert [await listen(client, stored_id) for _ in range(2)] == [200] * 2  # during
    assert client.server.app[PLAYS].pending == 2
    text = await (await client.get("/metrics")).text()
    assert metric(text, "clips_db_errors_total", kind="unavailable") >= 1  # the 503s
    assert metric(text, "clips_db_errors_total", kind="play_write") >= 1  # plays waiting

    await asyncio.to_thread(own_server.start)

    async def ready() -> bool:
        return (await client.get("/readyz")).status == 200

    # It recovers by itself within seconds, no restart.
    await wait_until(ready, "recovery after PostgreSQL came back", seconds=15, interval=0.1)
    assert [await listen(client, stored_id) for _ in range(4)] == [200] * 4  # after
    await client.server.app[PLAYS].flush()
    clip = await (await client.get(f"/clips/{stored_id}")).json()
    assert clip["play_count"] == 3 + 2 + 4  # none lost, none twice
