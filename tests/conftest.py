"""Real parts for every test: PostgreSQL, an HTTP origin on loopback, the app.

PostgreSQL is the embedded server in a temporary directory, or the one
TEST_DATABASE_URL names. Migrations run once into a template database; each
test gets a fresh copy of it (CREATE DATABASE ... TEMPLATE, ~50 ms).

The media store is MEDIA_DIR unless a test asks for `media_store` "s3"
(`pytest.mark.parametrize("media_store", [...], indirect=True)`): then the
app keeps uploads in a fresh bucket of a local S3-compatible server (moto's
server mode, started once per session on loopback), seeded with the same
audio files MEDIA_DIR holds.
"""

import html
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from db import POOL, clips, migrate
from db.embedded import start
from db.plays import PLAYS
from db.seed import synthesise, write_wav
from server import SERVER_OPTIONS, create_app
from settings import Settings
from tests.browser import Chromium
from tests.buckets import TestBucket, start_s3_server
from tests.support import media_files

TEMPLATE = "clips_test_template"


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def server_url():
    """The admin URL of the PostgreSQL server the suite uses."""
    if os.environ.get("TEST_DATABASE_URL"):
        yield os.environ["TEST_DATABASE_URL"]
        return
    # Not under pytest's basetemp: a second pytest run resets that tree's
    # permissions and would cut this run's server off from its files.
    with tempfile.TemporaryDirectory(prefix="clips-test-pg-") as directory:
        server = start(Path(directory) / "data", cleanup_mode="delete")
        yield server.get_uri()
        server.cleanup()


async def _admin(server_url: str, *statements: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def template_url(server_url):
    import asyncio

    asyncio.run(
        _admin(
            server_url,
            f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)",
            f"CREATE DATABASE {TEMPLATE}",
        )
    )
    url = with_database(server_url, TEMPLATE)
    migrate.apply(url)
    return url


@pytest.fixture
async def empty_database_url(server_url):
    """A database with no schema at all."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    await _admin(server_url, f"CREATE DATABASE {name}")
    yield with_database(server_url, name)
    await _admin(server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
async def database_url(server_url, template_url):
    """A fresh, fully migrated database for one test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    await _admin(server_url, f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    yield with_database(server_url, name)
    await _admin(server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def audio_dir(tmp_path_factory) -> Path:
    """Audio files the origin serves: a real WAV, and a multi-megabyte file."""
    directory = tmp_path_factory.mktemp("audio")
    write_wav(directory / "tune.wav", synthesise(220.0, [0, 4, 7, 12], 120, seconds=20))
    (directory / "big.mp3").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    (directory / "small.mp3").write_bytes(os.urandom(10_000))
    return directory


@pytest.fixture
def media_dir(tmp_path, audio_dir) -> Path:
    """MEDIA_DIR for one test, holding copies of the same audio files."""
    directory = tmp_path / "media"
    directory.mkdir()
    for path in audio_dir.iterdir():
        (directory / path.name).write_bytes(path.read_bytes())
    return directory


@pytest.fixture
async def origin(aiohttp_server, audio_dir):
    """A real HTTP origin on loopback: static files with real Range and ETag."""
    app = web.Application()
    app.router.add_static("/audio", audio_dir)
    return await aiohttp_server(app)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> str:
    """A local S3-compatible endpoint (moto_server) on loopback, for the
    session: its URL."""
    with start_s3_server(tmp_path_factory.mktemp("s3")) as endpoint:
        yield endpoint


@pytest.fixture
def media_store(request) -> str:
    """ "local" (MEDIA_DIR), or "s3" when a test parametrizes it so."""
    return getattr(request, "param", "local")


@pytest.fixture
def bucket(media_store, request, audio_dir) -> TestBucket | None:
    """With media_store "s3": a fresh bucket holding audio_dir's files (as
    media_dir does), removed with what it holds after the test."""
    if media_store != "s3":
        yield None
        return
    made = TestBucket(request.getfixturevalue("s3_server"), f"t-{uuid.uuid4().hex[:12]}")
    for path in audio_dir.iterdir():
        made.put(path.name, path.read_bytes())
    yield made
    made.remove()


@pytest.fixture
def cache_max_bytes() -> int:
    """CACHE_MAX_BYTES of the app under test: off, unless a module runs its
    tests with the cache on and off (tests/support.py, cache_on_and_off)."""
    return 0


@pytest.fixture
def settings(database_url, media_dir, tmp_path, cache_max_bytes, bucket) -> Settings:
    return Settings(
        DATABASE_URL=database_url,
        MEDIA_DIR=media_dir,
        CACHE_DIR=tmp_path / "cache",
        CACHE_MAX_BYTES=cache_max_bytes,
        MIGRATE_ON_START=False,
        UPSTREAM_ALLOW="127.0.0.1/32",
        UPSTREAM_HEADERS_TIMEOUT=1.0,
        UPSTREAM_READ_TIMEOUT=1.0,
        UPSTREAM_CONNECT_TIMEOUT=1.0,
        # Jobs run only where a test asks for them (tests/test_previews.py):
        # elsewhere an upload's preview would replace the original it streams.
        JOB_WORKERS=0,
        # Many tests change the catalogue behind the app's back (seeds, SQL,
        # a dropped database) and read it at once; tests/test_pages.py
        # turns the kept pages on.
        LIST_CACHE_SECONDS=0,
        **(bucket.settings() if bucket is not None else {}),
    )


@pytest.fixture
def stored(media_dir, bucket):
    """What the media store holds, as names: MEDIA_DIR's files (stored
    clips and uploads being received), and with a bucket its objects and
    the multipart uploads in progress too."""

    def names() -> set[str]:
        local = media_files(media_dir)
        return local if bucket is None else local | bucket.names() | bucket.uploads()

    return names


@pytest.fixture
def make_client(settings, aiohttp_client):
    """Start the real app with `settings` on a loopback port; returns a client.

    Depends on settings first: the app must close before its database is
    dropped."""

    async def make(settings: Settings = settings):
        server = TestServer(create_app(settings))
        await server.start_server(**SERVER_OPTIONS)
        return await aiohttp_client(server)

    return make


@pytest.fixture
async def client(make_client):
    return await make_client()


@pytest.fixture
def app(client) -> web.Application:
    return client.server.app


@pytest.fixture
def pool(app) -> asyncpg.Pool:
    return app[POOL]


@pytest.fixture
def plays(app):
    return app[PLAYS]


@pytest.fixture
def make_clip(pool):
    """Insert a clip straight into the catalogue; returns its id."""

    async def make(**fields) -> int:
        defaults = {
            "title": "A clip",
            "description": "",
            "genre": "rock",
            "duration_seconds": 20.0,
            "audio_url": None,
            "media_path": None,
            "content_type": "audio/mpeg",
        }
        return (await clips.create_clip(pool, **{**defaults, **fields}))["id"]

    return make


@pytest.fixture
async def browser():
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed: run `make test-deps` (apt-get install chromium)")
    async with Chromium() as chromium:
        yield chromium


@pytest.fixture
async def player(aiohttp_server) -> URL:
    """A page with one `<audio src=?src preload=?preload>` (preload "none"
    unless given), from its own origin (as a site embedding our streams
    would be)."""

    async def page(request: web.Request) -> web.Response:
        src = html.escape(request.query["src"])
        preload = html.escape(request.query.get("preload", "none"))
        body = (
            f'<!doctype html><title>player</title><audio src="{src}" preload="{preload}"></audio>'
        )
        return web.Response(text=body, content_type="text/html")

    app = web.Application()
    app.router.add_get("/player", page)
    server = await aiohttp_server(app)
    return server.make_url("/player")
