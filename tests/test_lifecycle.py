"""What an operator reads when the server starts and stops: a taken port
is one line naming it, and a stop ends on "stopped" with how long the drain
took. Real processes: `python server.py` against a real PostgreSQL."""

import asyncio
import os
import re
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.support import MP3, free_port, upload_form, wait_until

ROOT = Path(__file__).resolve().parent.parent
STOPPED = re.compile(r".* INFO __main__: stopped \((\d+ workers )?drained in \d+\.\d s\)")


def server_env(database_url: str, port: int, media_dir: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHON_DOTENV_DISABLED": "1",
        "DATABASE_URL": database_url,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "MEDIA_DIR": str(media_dir),
        "CACHE_DIR": str(media_dir / "cache"),
        "SHUTDOWN_GRACE": "2",
        **extra,
    }


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_a_taken_port_is_one_line_naming_it(database_url, tmp_path, workers):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            ROOT / "server.py",
            env=server_env(database_url, port, tmp_path, WORKERS=workers),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        async with asyncio.timeout(30):
            output, _ = await process.communicate()
    assert process.returncode != 0
    assert output.decode().splitlines() == [f"port {port} is in use (set PORT)"]


async def start_serving(
    database_url: str, port: int, tmp_path: Path, log: Path, workers: str, new_group=False
) -> asyncio.subprocess.Process:
    """`python server.py`, once it answers /healthz; its output goes to `log`."""
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            ROOT / "server.py",
            env=server_env(database_url, port, tmp_path, WORKERS=workers),
            stdout=out,
            stderr=out,
            start_new_session=new_group,
        )
    try:
        async with aiohttp.ClientSession() as session:

            async def serving() -> bool:
                try:
                    async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                        return response.status == 200
                except aiohttp.ClientConnectionError:
                    return False

            await wait_until(serving, "the server answers", seconds=30, details=log.read_text)
    except BaseException:
        process.kill()
        await process.wait()
        raise
    return process


@pytest.mark.parametrize(
    ("workers", "sign"), [("1", signal.SIGINT), ("1", signal.SIGTERM), ("2", signal.SIGINT)]
)
async def test_a_stop_ends_on_stopped_with_the_drain_time(database_url, tmp_path, workers, sign):
    port = free_port()
    log = tmp_path / "server.log"
    process = await start_serving(database_url, port, tmp_path, log, workers)
    try:
        lines = log.read_text().splitlines()
        assert any(f"serving on http://127.0.0.1:{port}" in line for line in lines), lines
        process.send_signal(sign)
        assert await asyncio.wait_for(process.wait(), 20) == 0, log.read_text()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    lines = log.read_text().splitlines()
    assert STOPPED.fullmatch(lines[-1]), lines
    assert "shutting down: no new connections" in log.read_text()


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_ctrl_c_to_the_whole_group_stops_cleanly(database_url, tmp_path, workers):
    """Ctrl-C in a terminal signals every process of the group: workers,
    and the audio readers an upload started. Each stops once, exit 0, and
    nothing but log records reaches the terminal (no KeyboardInterrupt
    traceback from a reader)."""
    port = free_port()
    log = tmp_path / "server.log"
    # Its own process group, as a terminal's job.
    process = await start_serving(database_url, port, tmp_path, log, workers, new_group=True)
    try:
        async with aiohttp.ClientSession() as session:
            form = upload_form(MP3)
            async with session.post(f"http://127.0.0.1:{port}/clips", data=form) as response:
                assert response.status == 201, await response.text()
        os.killpg(process.pid, signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), 20) == 0, log.read_text()
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
    text = log.read_text()
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    assert STOPPED.fullmatch(text.splitlines()[-1]), text
