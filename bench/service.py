"""The app under test, as production runs it: `python server.py` in its own
process, configured only through the environment."""

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench import processes

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class App:
    url: str
    port: int
    pid: int
    log: Path
    workers_asked: int

    def usage(self) -> processes.Usage:
        return processes.usage(self.pid)

    def workers(self) -> int:
        """How many processes really serve the port (the app may not know
        WORKERS yet and run one regardless)."""
        return len(processes.listeners(self.pid, self.port))


def environment(database_url: str, media_dir: Path, port: int, workers: int) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TZ")}
    return {
        **keep,
        "DATABASE_URL": database_url,
        "MEDIA_DIR": str(media_dir),
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "UPSTREAM_ALLOW": "127.0.0.0/8",
        "MIGRATE_ON_START": "false",
        "LOG_LEVEL": "WARNING",
        "WORKERS": str(workers),
        "PYTHONUNBUFFERED": "1",
    }


async def wait_ready(url: str, process: asyncio.subprocess.Process, log: Path) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(600):
            if process.returncode is not None:
                raise RuntimeError(f"app exited ({process.returncode}):\n{processes.tail(log)}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{url}/readyz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise RuntimeError(f"app not ready after 30 s:\n{processes.tail(log)}")


@contextlib.asynccontextmanager
async def running(
    database_url: str, media_dir: Path, run: Path, workers: int, cpus: frozenset[int] | None
) -> AsyncIterator[App]:
    port = processes.free_port()
    log = run / f"app-{port}.log"
    process = await processes.spawn(
        sys.executable,
        str(ROOT / "server.py"),
        cpus=cpus,
        log=log,
        env=environment(database_url, media_dir, port, workers),
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(url, process, log)
        yield App(url=url, port=port, pid=process.pid, log=log, workers_asked=workers)
    finally:
        # SIGTERM, as an orchestrator sends: the app drains and flushes plays.
        await processes.stop(process, sig=signal.SIGTERM, grace=40)
        if process.returncode != 0:
            print(
                f"app exited with {process.returncode}; last log lines:\n{processes.tail(log)}",
                flush=True,
            )
