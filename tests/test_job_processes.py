"""Jobs are durable and shared, with real server processes on one
PostgreSQL: a server killed with SIGKILL mid-job leaves the job to be
finished after a restart, and two servers sharing the queue do each job
exactly once."""

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from db import clips
from db import jobs as queue
from tests.audio import stereo_wav
from tests.scrape import metric
from tests.support import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent


class Server:
    """`python server.py` in a process group of its own (with its job
    processes), serving on a free port; its output goes to `log`."""

    def __init__(self, database_url: str, media_dir: Path, log: Path, lease: float = 2):
        self.port = free_port()
        self.log = log
        self.env = {
            **os.environ,
            "PYTHON_DOTENV_DISABLED": "1",
            "DATABASE_URL": database_url,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "MEDIA_DIR": str(media_dir),
            "MIGRATE_ON_START": "false",
            "SHUTDOWN_GRACE": "2",
            "JOB_WORKERS": "1",
            "JOB_LEASE_SECONDS": str(lease),
            "JOB_POLL_SECONDS": "0.1",
        }
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> "Server":
        with self.log.open("ab") as out:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, ROOT / "server.py", env=self.env, stdout=out, stderr=out,
                start_new_session=True,
            )  # fmt: skip
        async with aiohttp.ClientSession() as session:

            async def serving() -> bool:
                try:
                    async with session.get(f"http://127.0.0.1:{self.port}/healthz") as response:
                        return response.status == 200
                except aiohttp.ClientConnectionError:
                    return False

            await wait_until(serving, "the server answers", seconds=30, details=self.log.read_text)
        return self

    async def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.port}/metrics"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            return await response.text()

    async def kill(self) -> None:
        """SIGKILL to the whole group: the server and its job processes."""
        if self.process is not None and self.process.returncode is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            await self.process.wait()

    async def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.process.wait(), 20)


@pytest.fixture
async def conn(database_url):
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


async def stored_clip(conn, name: str, seconds: float) -> int:
    clip = await clips.create_clip(
        conn, title=name, description="", genre="rock", duration_seconds=seconds,
        audio_url=None, media_path=name, content_type="audio/wav", jobs=("preview", "peaks"),
    )  # fmt: skip
    return clip["id"]


async def test_a_job_killed_mid_way_is_finished_after_a_restart(database_url, conn, tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    # Its audio is a FIFO nobody writes to: the job opens it and waits there,
    # certainly mid-job when the server is killed.
    os.mkfifo(media / "held.wav")
    clip_id = await stored_clip(conn, "held.wav", 20.0)
    log = tmp_path / "server.log"
    first = await Server(database_url, media, log).start()
    try:

        async def running() -> bool:
            states = {r["kind"]: r["state"] for r in await queue.job_states(conn, clip_id)}
            return "running" in states.values()

        await wait_until(running, "a job running", seconds=30, details=log.read_text)
    finally:
        await first.kill()
    held = [r for r in await queue.job_states(conn, clip_id) if r["state"] == "running"]
    assert len(held) == 1 and held[0]["attempts"] == 1

    (media / "held.wav").unlink()
    (media / "held.wav").write_bytes(stereo_wav(20.0))
    second = await Server(database_url, media, log).start()
    try:

        async def all_done() -> bool:
            states = await queue.job_states(conn, clip_id)
            return all(r["state"] == "done" for r in states)

        await wait_until(
            all_done, "the jobs done after a restart", seconds=60, details=log.read_text
        )
        retaken = {r["kind"]: r["attempts"] for r in await queue.job_states(conn, clip_id)}
        assert retaken[held[0]["kind"]] == 2  # claimed again once the lease ran out
        preview = await conn.fetchrow(
            "SELECT preview_status, preview_path FROM clips WHERE id = $1", clip_id
        )
        assert preview["preview_status"] == "ready"
        assert (media / preview["preview_path"]).stat().st_size > 0
        assert await second.stop() == 0, log.read_text()
    finally:
        await second.kill()


async def test_two_servers_share_the_queue_and_do_each_job_once(database_url, conn, tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    log = tmp_path / "servers.log"
    # Nobody dies here: a lease long enough that no stall on a loaded
    # machine lets a job be taken over (which would be right, but not this test).
    servers = [Server(database_url, media, log, lease=15) for _ in range(2)]
    try:
        await asyncio.gather(*(server.start() for server in servers))
        wav = stereo_wav(8.0)
        ids = []
        for n in range(10):
            (media / f"take-{n}.wav").write_bytes(wav)
            ids.append(await stored_clip(conn, f"take-{n}.wav", 8.0))

        async def all_done() -> bool:
            states = [r for clip_id in ids for r in await queue.job_states(conn, clip_id)]
            return all(r["state"] == "done" for r in states)

        await wait_until(all_done, "every job done", seconds=90, details=log.read_text)
        jobs = [r for clip_id in ids for r in await queue.job_states(conn, clip_id)]
        assert len(jobs) == 20 and all(r["attempts"] == 1 for r in jobs)
        # Both servers took part, and together they report each job done once.
        assert len({r["worker"] for r in jobs}) == 2
        scrapes = await asyncio.gather(*(server.metrics() for server in servers))
        done = sum(
            metric(text, "clips_jobs_total", kind=kind, outcome="done")
            for text in scrapes
            for kind in ("preview", "peaks")
        )
        assert done == 20
        # One preview file per clip: no job made a second one.
        assert len(list(media.glob("*.mp3"))) == 10
        assert [await server.stop() for server in servers] == [0, 0], log.read_text()
    finally:
        for server in servers:
            await server.kill()
