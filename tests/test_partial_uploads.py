"""Partial uploads a dead process left behind are removed; live ones are not.

A server killed mid-upload (SIGKILL: no cleanup runs) leaves its
`.upload-*` file in MEDIA_DIR. The next start removes it, and a running
server sweeps periodically; a partial file written recently may belong to a
live upload of another worker or replica, and is kept. Real processes:
`python server.py` against the test database.

Both media stores: with MEDIA_STORE=s3 the partial file is MEDIA_DIR's
copy of an upload being received (its duration is read from it), swept
alike; the bucket keeps nothing of an upload whose process died before
its first 5 MiB part (a multipart upload begun and never finished is the
bucket's lifecycle rule's to abort: README, "Past one machine").
"""

import asyncio
import os
import signal
import sys
import time
import uuid
from pathlib import Path

import aiohttp
import pytest

from storage import PARTIAL
from tests.support import MP3, free_port, media_files, raw_upload_head, wait_until

ROOT = Path(__file__).resolve().parent.parent
HOUR = 3600

pytestmark = pytest.mark.parametrize("media_store", ["local", "s3"], indirect=True)


def partials(media_dir: Path) -> set[str]:
    return {name for name in media_files(media_dir) if name.startswith(PARTIAL)}


def make_old(path: Path) -> None:
    """As if nobody had written `path` for an hour (instead of waiting)."""
    then = time.time() - HOUR
    os.utime(path, (then, then))


@pytest.fixture
async def start_server(database_url, tmp_path, bucket):
    """Starts `python server.py` on MEDIA_DIR; returns (process, base URL, log)
    once it serves. Every process started is killed at the end."""
    processes = []

    async def start(media_dir: Path):
        port = free_port()
        log = tmp_path / f"server-{len(processes)}.log"
        env = {
            **os.environ,
            "PYTHON_DOTENV_DISABLED": "1",
            "DATABASE_URL": database_url,
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "MEDIA_DIR": str(media_dir),
            "CACHE_DIR": str(tmp_path / "cache"),
            **(bucket.settings() if bucket is not None else {}),
        }
        with log.open("wb") as out:
            process = await asyncio.create_subprocess_exec(
                sys.executable, ROOT / "server.py", env=env, stdout=out, stderr=out
            )
        processes.append(process)
        base = f"http://127.0.0.1:{port}"

        async def serving() -> bool:
            assert process.returncode is None, log.read_text()
            try:
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(f"{base}/healthz") as response,
                ):
                    return response.status == 200
            except aiohttp.ClientConnectionError:
                return False

        await wait_until(serving, "the server serving", seconds=30, details=log.read_text)
        return process, base, log

    yield start
    for process in processes:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def test_a_partial_upload_left_by_a_killed_server_is_removed_at_start(
    start_server, tmp_path, bucket
):
    objects = bucket.names() if bucket is not None else set()
    media_dir = tmp_path / "media"
    media_dir.mkdir()
    (media_dir / "stored.mp3").write_bytes(MP3)  # a clip's file: never swept
    process, base, _ = await start_server(media_dir)

    # An upload in progress: its partial file is on disk when the server dies.
    port = int(base.rsplit(":", 1)[1])
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw_upload_head(len(MP3)) + MP3[:20_000])
    await writer.drain()
    await wait_until(lambda: partials(media_dir), "the partial upload on disk")
    process.send_signal(signal.SIGKILL)
    assert await asyncio.wait_for(process.wait(), 15) == -signal.SIGKILL
    writer.close()
    (dead,) = partials(media_dir)
    make_old(media_dir / dead)
    # Another worker's or replica's upload in progress: written just now.
    live = f"{PARTIAL}{uuid.uuid4().hex}"
    (media_dir / live).write_bytes(MP3[:1000])

    process, _, log = await start_server(media_dir)

    assert partials(media_dir) == {live}
    assert "stored.mp3" in media_files(media_dir)
    assert f"removed 1 partial upload(s) left by a process that died: {dead}" in log.read_text()
    if bucket is not None:
        assert (bucket.names(), bucket.uploads()) == (objects, set())
    process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), 15) == 0


async def test_a_running_server_sweeps_partial_uploads_periodically(
    settings, make_client, media_dir
):
    # Short limits: a partial file is stale after 4 x max(0.1, 2 x 0.1) s.
    client = await make_client(
        settings.changed({"upload_idle_seconds": 0.1, "upload_parse_seconds": 0.1})
    )
    assert (await client.get("/healthz")).status == 200
    dead = media_dir / f"{PARTIAL}{uuid.uuid4().hex}"
    dead.write_bytes(MP3[:1000])
    make_old(dead)

    await wait_until(lambda: not dead.exists(), "the periodic sweep")
