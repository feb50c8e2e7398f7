"""WORKERS > 1: the supervisor stops the whole set when one worker dies,
and one scrape reports every worker.

A worker that dies leaves the port served at reduced capacity with no one
to notice; the supervisor stops the others and exits non-zero instead, so
the orchestrator restarts the container. SIGTERM still stops all of them
cleanly, exit 0. Whichever worker answers /metrics, it reports the whole
group, from a metrics directory the supervisor creates and removes.
Real processes: `python server.py`, a real PostgreSQL.
"""

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from db import clips
from tests.scrape import metric, samples
from tests.support import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent


def workers_of(pid: int) -> list[int]:
    """The supervisor's worker processes (spawned by multiprocessing)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [
        int(child)
        for child in children
        if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()
    ]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.fixture
async def supervisor(database_url, tmp_path):
    """`python server.py` with WORKERS=2, once both workers run and it serves."""
    port = free_port()
    log = tmp_path / "server.log"
    (tmp_path / "tmp").mkdir()
    env = {
        **os.environ,
        "PYTHON_DOTENV_DISABLED": "1",
        "DATABASE_URL": database_url,
        "WORKERS": "2",
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "MEDIA_DIR": str(tmp_path),
        "CACHE_DIR": str(tmp_path / "cache"),
        "UPSTREAM_ALLOW": "127.0.0.1/32",
        "SHUTDOWN_GRACE": "2",
        "TMPDIR": str(tmp_path / "tmp"),  # where the supervisor makes its metrics directory
    }
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, ROOT / "server.py", env=env, stdout=out, stderr=out
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        async with aiohttp.ClientSession() as session:
            while True:
                assert time.monotonic() < deadline, log.read_text()
                assert process.returncode is None, log.read_text()
                try:
                    async with session.get(f"{base}/healthz") as response:
                        if response.status == 200 and len(workers_of(process.pid)) == 2:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.05)  # polling processes that are starting up
        yield process, log, base
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_a_worker_that_dies_stops_the_set_with_a_failure(supervisor):
    process, log, _ = supervisor
    victim, survivor = workers_of(process.pid)

    os.kill(victim, signal.SIGKILL)
    code = await asyncio.wait_for(process.wait(), 15)

    assert code != 0
    assert not alive(survivor)
    assert f"(pid {victim}) exited (-9): stopping the others" in log.read_text()


async def test_sigterm_stops_every_worker_cleanly(supervisor):
    process, log, _ = supervisor
    workers = workers_of(process.pid)

    process.send_signal(signal.SIGTERM)
    code = await asyncio.wait_for(process.wait(), 15)

    assert code == 0, log.read_text()
    assert not any(alive(pid) for pid in workers)
    assert "stopping the others" not in log.read_text()


def metrics_dirs(tmp_path: Path) -> list[Path]:
    return list((tmp_path / "tmp").glob("clips-metrics-*"))


async def get(base: str, path: str) -> tuple[int, bytes]:
    """One request on a connection of its own, so the kernel picks the
    worker afresh each time (SO_REUSEPORT spreads connections)."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(f"{base}{path}") as response,
    ):
        return response.status, await response.read()


async def test_every_scrape_reports_the_requests_of_every_worker(supervisor, tmp_path):
    process, _, base = supervisor
    requests = 40
    for _ in range(requests):
        assert (await get(base, "/clips"))[0] == 200
    for _ in range(8):
        status, body = await get(base, "/metrics")
        assert status == 200
        text = body.decode()
        assert (
            metric(text, "clips_http_requests_total", method="GET", route="/clips", status="200")
            == requests
        )
        assert metric(text, "clips_http_request_duration_seconds_count", route="/clips") == requests
        # In flight: this scrape itself, summed over workers (each worker
        # has its own series for the route; the sum is 1).
        assert metric(text, "clips_http_requests_in_progress", route="/metrics") == 1

    # Per worker where an operator needs to tell them apart: both live pids.
    workers = {str(pid) for pid in workers_of(process.pid)}

    async def both_sampled() -> bool:
        text = (await get(base, "/metrics"))[1].decode()
        pids = {
            dict(labels).get("pid")
            for name, labels in samples(text)
            if name in ("clips_event_loop_tasks", "process_resident_memory_bytes")
        }
        return pids == workers

    await wait_until(both_sampled, "a tasks and memory series per worker", seconds=10)
    assert len(metrics_dirs(tmp_path)) == 1


async def test_plays_in_every_worker_add_up(supervisor, database_url, tmp_path):
    _, _, base = supervisor
    (tmp_path / "w.mp3").write_bytes(b"\xff" * 1000)
    connection = await asyncpg.connect(database_url)
    try:
        clip = await clips.create_clip(
            connection,
            title="A clip",
            description="",
            genre="rock",
            duration_seconds=20.0,
            audio_url=None,
            media_path="w.mp3",
            content_type="audio/mpeg",
        )
        plays = 30
        for _ in range(plays):
            assert await get(base, f"/clips/{clip['id']}/stream") == (200, b"\xff" * 1000)

        async def all_written() -> str | None:
            text = (await get(base, "/metrics"))[1].decode()
            return text if metric(text, "clips_plays_total") == plays else None

        text = await wait_until(all_written, f"clips_plays_total reaching {plays}", seconds=10)
        assert (
            metric(text, "clips_streams_started_total", clip_id=str(clip["id"]), source="stored")
            == plays
        )
        assert metric(text, "clips_streams_ended_total", reason="complete") == plays
        assert metric(text, "clips_stream_bytes_total", source="stored") == plays * 1000
        assert metric(text, "clips_streams_in_flight") == 0
        assert (await clips.get_clip(connection, clip["id"]))["play_count"] == plays
    finally:
        await connection.close()


async def test_the_metrics_directory_is_the_runs_own(supervisor, tmp_path):
    process, log, _ = supervisor
    (directory,) = metrics_dirs(tmp_path)
    workers = {f"{pid}.db" for pid in workers_of(process.pid)}

    def files_of_every_worker() -> bool:  # the second may still be starting
        return {path.name.rpartition("_")[2] for path in directory.glob("*.db")} == workers

    await wait_until(files_of_every_worker, "a metrics file per worker", seconds=10)

    process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), 15) == 0, log.read_text()
    assert metrics_dirs(tmp_path) == []


async def test_workers_share_one_cache_directory(
    supervisor, database_url, tmp_path, aiohttp_server
):
    """Both workers serve a remote clip from one CACHE_DIR: one origin fetch
    (at most one per worker, each coalescing its own listeners), one body
    on disk, every listener the same bytes, every play counted."""
    _, _, base = supervisor
    audio, fetched = os.urandom(300 * 1024), []

    async def origin(request: web.Request) -> web.Response:
        fetched.append(request.path)
        headers = {"ETag": '"w"', "Cache-Control": "max-age=3600"}
        return web.Response(body=audio, content_type="audio/mpeg", headers=headers)

    app = web.Application()
    app.router.add_get("/w.mp3", origin)
    server = await aiohttp_server(app)
    connection = await asyncpg.connect(database_url)
    try:
        clip = await clips.create_clip(
            connection,
            title="A remote clip",
            description="",
            genre="rock",
            duration_seconds=20.0,
            audio_url=str(server.make_url("/w.mp3")),
            media_path=None,
            content_type="audio/mpeg",
        )
        plays = 30
        for _ in range(plays):
            assert await get(base, f"/clips/{clip['id']}/stream") == (200, audio)
        assert 1 <= len(fetched) <= 2, fetched
        assert len(list((tmp_path / "cache").glob("*.audio"))) == 1
        text = (await get(base, "/metrics"))[1].decode()
        served = sum(
            metric(text, "clips_cache_requests_total", result=result)
            for result in ("hit", "miss", "coalesced")
        )
        assert served == plays

        async def all_written() -> bool:
            return (await clips.get_clip(connection, clip["id"]))["play_count"] == plays

        await wait_until(all_written, f"{plays} plays written", seconds=10)
    finally:
        await connection.close()
