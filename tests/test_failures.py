"""Errors say what failed: a disk is not the database, nor is anything else.

Real failures: a MEDIA_DIR replaced by a plain file, a MEDIA_DIR on a full
filesystem (a 256 KiB tmpfs), a stored file that cannot be removed. Each is
answered as a storage problem (or, for a delete, logged and counted), the
database stays untouched and unblamed, and /readyz stays 200.

These run on MEDIA_DIR only: they break a local filesystem, which a bucket
does not have (with MEDIA_STORE=s3, MEDIA_DIR holds only the upload's copy
read for its duration, and these failures of it are answered the same way).
A bucket's own failures (missing, unreachable, refusing the credentials)
are test_bucket.py's.
"""

import asyncio
import errno
import io
import logging
import os
import shutil
import subprocess

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from db import POOL
from db.clips import get_clip
from server import SERVER_OPTIONS, create_app
from tests.scrape import metric, scrape
from tests.support import (
    MP3,
    clip_count,
    raw_form,
    raw_upload_head,
    read_problem,
    read_status,
    upload_form,
)


async def assert_database_not_blamed(client) -> None:
    text = await scrape(client)
    assert metric(text, "clips_db_errors_total", kind="unavailable") == 0
    assert metric(text, "clips_db_errors_total", kind="query") == 0
    assert (await client.get("/readyz")).status == 200


@pytest.fixture
def small_media_dir(media_dir):
    """Mounts a tmpfs of the given size (`mount` syntax, e.g. "256k") as
    MEDIA_DIR: writes past it fail with ENOSPC."""
    mounted_dirs = []

    def mount(size: str):
        shutil.rmtree(media_dir)
        media_dir.mkdir()
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(media_dir)],
            capture_output=True,
            text=True,
        )
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.strip()}")
        mounted_dirs.append(media_dir)
        return media_dir

    yield mount
    for directory in mounted_dirs:
        subprocess.run(["umount", str(directory)], check=True)


@pytest.fixture
def full_media_dir(small_media_dir):
    """MEDIA_DIR on a 256 KiB tmpfs."""
    return small_media_dir("256k")


async def test_an_upload_into_a_vanished_media_dir_names_storage(
    client, pool, media_dir, audio_dir
):
    shutil.rmtree(media_dir)
    media_dir.write_text("MEDIA_DIR replaced by a plain file\n")
    before = await clip_count(pool)

    response = await client.post(
        "/clips", data=upload_form((audio_dir / "tune.wav").read_bytes(), "song.wav")
    )

    body = await read_problem(response, 500)
    assert "media store" in body["detail"]
    assert "MEDIA_DIR" in body["detail"]
    assert "database" not in body["detail"]
    assert await clip_count(pool) == before
    assert metric(await scrape(client), "clips_storage_errors_total", operation="write") == 1
    await assert_database_not_blamed(client)


async def test_an_upload_onto_a_full_disk_is_507_and_leaves_nothing(
    settings, make_client, full_media_dir, audio_dir
):
    # No reserve: the disk itself runs out (ENOSPC) mid-upload.
    client = await make_client(settings.changed({"media_min_free_bytes": 0}))
    pool = client.server.app[POOL]
    wav = (audio_dir / "tune.wav").read_bytes()
    assert len(wav) > 256 * 1024
    before = await clip_count(pool)

    response = await client.post("/clips", data=upload_form(wav, "song.wav"))

    assert "full" in (await read_problem(response, 507))["detail"]
    assert os.listdir(full_media_dir) == []  # the partial upload is gone
    assert await clip_count(pool) == before
    assert metric(await scrape(client), "clips_storage_errors_total", operation="write") == 1
    await assert_database_not_blamed(client)
    # Room again: the same upload goes through.
    remount = await asyncio.create_subprocess_exec("mount", "-o", "remount,size=4m", full_media_dir)
    assert await remount.wait() == 0
    assert (await client.post("/clips", data=upload_form(wav, "song.wav"))).status == 201


async def test_an_upload_that_would_eat_into_the_reserve_is_507_and_leaves_nothing(
    settings, make_client, small_media_dir, audio_dir
):
    """MEDIA_MIN_FREE_BYTES is kept free: an upload whose Content-Length
    would go below it is refused before its body is read, and one without a
    Content-Length (chunked) as soon as its bytes would. A Content-Length
    past MAX_UPLOAD_BYTES is 413, never taken for a full disk."""
    media_dir = small_media_dir("1m")
    client = await make_client(settings.changed({"media_min_free_bytes": 768 * 1024}))
    pool = client.server.app[POOL]
    wav = (audio_dir / "tune.wav").read_bytes()
    assert 256 * 1024 < len(wav) < 1024 * 1024  # it would fit, but not above the reserve

    declared = await client.post("/clips", data=upload_form(io.BytesIO(wav), "song.wav"))
    assert "full" in (await read_problem(declared, 507))["detail"]
    # A size no upload may have is 413 before the disk is asked: not counted
    # as a storage error (the count below stays at the two real refusals).
    oversized = raw_upload_head(2**40, "reserve")
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(oversized)
    try:
        async with asyncio.timeout(10):
            status, _ = await read_status(reader)
    finally:
        writer.close()
    assert status == 413
    assert metric(await scrape(client), "clips_storage_errors_total", operation="write") == 1

    form, tail = raw_form("reserve")
    body = form + wav + tail

    async def chunks():  # no Content-Length: the body arrives as it is sent
        for start in range(0, len(body), 64 * 1024):
            yield body[start : start + 64 * 1024]

    headers = {"Content-Type": "multipart/form-data; boundary=reserve"}
    chunked = await client.post("/clips", data=chunks(), headers=headers)
    assert "full" in (await read_problem(chunked, 507))["detail"]

    assert os.listdir(media_dir) == []
    assert await clip_count(pool) == 0
    assert metric(await scrape(client), "clips_storage_errors_total", operation="write") == 2
    await assert_database_not_blamed(client)
    # A small file leaves the reserve whole: it goes through.
    assert (await client.post("/clips", data=upload_form(MP3))).status == 201


async def test_a_file_that_cannot_be_removed_does_not_undo_a_delete(
    client, make_clip, media_dir, pool, caplog
):
    (media_dir / "stuck").mkdir()  # unlink() fails on a directory: EISDIR
    (media_dir / "stuck" / "inside").write_bytes(b"x")
    clip_id = await make_clip(media_path="stuck", content_type="audio/wav")

    with caplog.at_level(logging.ERROR):
        response = await client.delete(f"/clips/{clip_id}")

    # The clip is gone either way: a retry would only find a 404.
    assert response.status == 204
    assert await get_clip(pool, clip_id) is None
    assert (media_dir / "stuck").exists()
    assert any("orphaned file in MEDIA_DIR" in r.getMessage() for r in caplog.records)
    assert metric(await scrape(client), "clips_storage_errors_total", operation="delete") == 1
    await assert_database_not_blamed(client)


async def test_an_os_error_elsewhere_is_a_500_never_the_database(settings, aiohttp_client, caplog):
    async def broken(request: web.Request) -> web.Response:
        raise OSError(errno.EIO, "Input/output error")

    # The real app and middleware stack, one route more: an OSError raised
    # by no database and no store.
    app = create_app(settings)
    app.router.add_get("/broken", broken)
    server = TestServer(app)
    await server.start_server(**SERVER_OPTIONS)
    client = await aiohttp_client(server)
    with caplog.at_level(logging.ERROR):
        response = await client.get("/broken")

    assert (await read_problem(response, 500))["detail"] == "Internal error"
    assert any(
        r.getMessage().startswith("unhandled error: GET /broken") and r.exc_info
        for r in caplog.records
    )
    await assert_database_not_blamed(client)


async def test_a_stored_file_that_cannot_be_read_is_a_storage_error(client, make_clip, media_dir):
    """Missing is a 404; there but unreadable (MEDIA_DIR replaced by a plain
    file here: ENOTDIR) is the store failing, and says so."""
    clip_id = await make_clip(media_path="tune.wav", content_type="audio/wav")
    shutil.rmtree(media_dir)
    media_dir.write_text("MEDIA_DIR replaced by a plain file\n")

    body = await read_problem(await client.get(f"/clips/{clip_id}/stream"), 500)

    assert "media store" in body["detail"]
    assert metric(await scrape(client), "clips_storage_errors_total", operation="read") == 1
    await assert_database_not_blamed(client)
