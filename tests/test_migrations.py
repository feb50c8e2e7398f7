"""The schema: yoyo migrations that apply, roll back and apply again, and
constraints that hold whatever code writes the rows."""

import asyncio

import asyncpg
import pytest

from db import migrate

TABLES = ("clips", "clip_plays_daily", "jobs", "clip_peaks")


async def schema(url: str) -> tuple[set[str], set[str]]:
    """The tables present among TABLES, and the applied migration ids."""
    conn = await asyncpg.connect(url)
    try:
        tables = {t for t in TABLES if await conn.fetchval("SELECT to_regclass($1)", t)}
        applied = set()
        if await conn.fetchval("SELECT to_regclass('_yoyo_migration')"):
            applied = {r[0] for r in await conn.fetch("SELECT migration_id FROM _yoyo_migration")}
        return tables, applied
    finally:
        await conn.close()


async def test_migrations_apply_roll_back_and_apply_again(empty_database_url):
    url = empty_database_url
    assert await schema(url) == (set(), set())

    await asyncio.to_thread(migrate.apply, url)
    assert await schema(url) == (set(TABLES), set(migrate.migration_ids()))
    await asyncio.to_thread(migrate.apply, url)  # nothing left to do
    assert await schema(url) == (set(TABLES), set(migrate.migration_ids()))

    await asyncio.to_thread(migrate.rollback, url)
    assert await schema(url) == (set(), set())

    await asyncio.to_thread(migrate.apply, url)
    assert await schema(url) == (set(TABLES), set(migrate.migration_ids()))
    conn = await asyncpg.connect(url)
    try:  # the re-applied schema takes a clip
        clip_id = await conn.fetchval(
            "INSERT INTO clips (title, genre, duration_seconds, audio_url, content_type)"
            " VALUES ('Back again', 'rock', 1, 'https://example.com/a.mp3', 'audio/mpeg')"
            " RETURNING id"
        )
        assert await conn.fetchval("SELECT title FROM clips WHERE id = $1", clip_id) == "Back again"
    finally:
        await conn.close()


GOOD = {
    "title": "A clip",
    "description": "",
    "genre": "rock",
    "duration_seconds": 10.0,
    "audio_url": "https://example.com/a.mp3",
    "media_path": None,
    "content_type": "audio/mpeg",
    "play_count": 0,
}


@pytest.fixture
async def conn(database_url):
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


async def insert(conn, **change) -> int:
    row = {**GOOD, **change}
    columns = ", ".join(row)
    values = ", ".join(f"${n}" for n in range(1, len(row) + 1))
    return await conn.fetchval(
        f"INSERT INTO clips ({columns}) VALUES ({values}) RETURNING id", *row.values()
    )


async def test_a_valid_row_is_accepted(conn):
    assert await insert(conn) >= 1
    assert await insert(conn, audio_url=None, media_path="demo-rain.wav") >= 1


BAD_CLIPS = [
    {"play_count": -1},
    {"genre": "Rock Music"},
    {"genre": "rock_"},
    {"genre": "-rock"},
    {"genre": "a" * 41},
    {"title": ""},
    {"title": "x" * 201},
    {"description": "x" * 2001},
    {"duration_seconds": 0.0},
    {"duration_seconds": -1.0},
    {"duration_seconds": 86400.5},
    {"audio_url": "ftp://example.com/a.mp3"},
    {"audio_url": "HTTP://example.com/a.mp3"},
    {"audio_url": None},  # no source at all
    {"media_path": "demo-rain.wav"},  # two sources
    {"audio_url": None, "media_path": "../etc/passwd"},
    {"content_type": "video/mp4"},
]


async def test_the_schema_refuses_bad_clips(conn, subtests):
    for change in BAD_CLIPS:
        with (
            subtests.test(change={k: str(v)[:30] for k, v in change.items()}),
            pytest.raises(asyncpg.CheckViolationError),
        ):
            await insert(conn, **change)
    assert await conn.fetchval("SELECT count(*) FROM clips") == 0


async def test_the_schema_refuses_null_titles_and_genres(conn):
    for change in ({"title": None}, {"genre": None}):
        with pytest.raises(asyncpg.NotNullViolationError):
            await insert(conn, **change)


async def test_the_schema_refuses_a_file_catalogued_twice(conn):
    await insert(conn, audio_url=None, media_path="demo-rain.wav")
    with pytest.raises(asyncpg.UniqueViolationError):
        await insert(conn, audio_url=None, media_path="demo-rain.wav")


async def test_the_daily_tally_refuses_zero_plays_and_unknown_clips(conn):
    clip_id = await insert(conn)
    with pytest.raises(asyncpg.CheckViolationError):
        await conn.execute(
            "INSERT INTO clip_plays_daily (clip_id, day, plays) VALUES ($1, current_date, 0)",
            clip_id,
        )
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await conn.execute(
            "INSERT INTO clip_plays_daily (clip_id, day, plays) VALUES ($1, current_date, 1)",
            clip_id + 1000,
        )
