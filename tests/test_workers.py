"""WORKERS > 1: the supervisor stops the whole set when one worker dies.

A worker that dies leaves the port served at reduced capacity with no one
to notice; the supervisor stops the others and exits non-zero instead, so
the orchestrator restarts the container. SIGTERM still stops all of them
cleanly, exit 0. Real processes: `python server.py`, a real PostgreSQL.
"""

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from tests.support import free_port

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
    env = {
        **os.environ,
        "PYTHON_DOTENV_DISABLED": "1",
        "DATABASE_URL": database_url,
        "WORKERS": "2",
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "MEDIA_DIR": str(tmp_path),
        "SHUTDOWN_GRACE": "2",
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
        yield process, log
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_a_worker_that_dies_stops_the_set_with_a_failure(supervisor):
    process, log = supervisor
    victim, survivor = workers_of(process.pid)

    os.kill(victim, signal.SIGKILL)
    code = await asyncio.wait_for(process.wait(), 15)

    assert code != 0
    assert not alive(survivor)
    assert f"(pid {victim}) exited (-9): stopping the others" in log.read_text()


async def test_sigterm_stops_every_worker_cleanly(supervisor):
    process, log = supervisor
    workers = workers_of(process.pid)

    process.send_signal(signal.SIGTERM)
    code = await asyncio.wait_for(process.wait(), 15)

    assert code == 0, log.read_text()
    assert not any(alive(pid) for pid in workers)
    assert "stopping the others" not in log.read_text()
