"""Two replicas that share nothing but PostgreSQL and a bucket: real
`python server.py` processes on two ports, MEDIA_STORE=s3 against the local
S3 server, each with its own MEDIA_DIR (an upload's copy for reading its
duration is all a replica keeps on disk)."""

import asyncio
import io
import os
import sys
from pathlib import Path

import aiohttp
import pytest

from storage.s3 import PART_BYTES
from tests.support import MP3, free_port, upload_form, wait_until

ROOT = Path(__file__).resolve().parent.parent
CLIP_CACHE_SECONDS = 1.0

pytestmark = pytest.mark.parametrize("media_store", ["s3"], indirect=True)


@pytest.fixture
async def replicas(database_url, bucket, tmp_path):
    """Two servers on one database and one bucket: their base URLs, once
    both serve. Killed at the end."""
    processes, bases = [], []
    for number in range(2):
        port = free_port()
        media_dir = tmp_path / f"media-{number}"
        media_dir.mkdir()
        log = tmp_path / f"replica-{number}.log"
        env = {
            **os.environ,
            **bucket.settings(),
            "PYTHON_DOTENV_DISABLED": "1",
            "DATABASE_URL": database_url,
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "MEDIA_DIR": str(media_dir),
            "MIGRATE_ON_START": "false",
            "CLIP_CACHE_SECONDS": str(CLIP_CACHE_SECONDS),
        }
        with log.open("wb") as out:
            process = await asyncio.create_subprocess_exec(
                sys.executable, ROOT / "server.py", env=env, stdout=out, stderr=out
            )
        processes.append(process)
        bases.append(f"http://127.0.0.1:{port}")

        async def serving(base=bases[-1], process=process, log=log) -> bool:
            assert process.returncode is None, log.read_text()
            try:
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(f"{base}/readyz") as response,
                ):
                    return response.status == 200
            except aiohttp.ClientConnectionError:
                return False

        await wait_until(serving, f"replica {number} serving", seconds=30, details=log.read_text)
    yield bases
    for process in processes:
        if process.returncode is None:
            process.kill()
        await process.wait()


@pytest.mark.parametrize("audio", [MP3, "big"], ids=["one-put", "multipart"])
async def test_an_upload_through_one_replica_streams_and_deletes_through_the_other(
    replicas, bucket, audio
):
    first, second = replicas
    if audio == "big":  # past one part: a multipart upload
        audio = MP3 * (PART_BYTES // len(MP3) + 2)
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{first}/clips", data=upload_form(io.BytesIO(audio), "two.mp3")
        ) as response:
            assert response.status == 201, await response.text()
            clip = await response.json()
        stream = f"{second}/clips/{clip['id']}/stream"
        async with session.get(stream) as response:
            assert response.status == 200
            assert await response.read() == audio
        ranges = [(0, 1), (1000, 1999), (len(audio) - 500, len(audio) - 1)]
        if len(audio) > PART_BYTES:
            ranges.append((PART_BYTES - 10, PART_BYTES + 9))  # across parts
        for start, end in ranges:
            async with session.get(stream, headers={"Range": f"bytes={start}-{end}"}) as response:
                assert response.status == 206
                assert response.headers["Content-Range"] == f"bytes {start}-{end}/{len(audio)}"
                assert await response.read() == audio[start : end + 1]

        async with session.delete(f"{first}/clips/{clip['id']}") as response:
            assert response.status == 204
        assert bucket.names() == {"small.mp3", "big.mp3", "tune.wav"}  # its object is gone

        async def gone_on_the_second() -> bool:
            async with session.get(stream) as response:
                assert response.status == 404, await response.text()  # at once: no object
                return f"No clip has id {clip['id']}" in await response.text()

        # The second replica's clip cache forgets the row within its lifetime.
        await wait_until(gone_on_the_second, "the row gone on the second", seconds=5)
