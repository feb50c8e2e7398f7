"""The app under test, as production runs it: `python server.py` in its own
process, configured only through the environment; and the bare-aiohttp
reference (bench/bare.py), run the same way beside it."""

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


# The read-through cache of remote clips (issue 15) for every app the
# harness starts: on, in a directory of its own, unless a scenario turns it
# off. An app without the cache ignores these (settings ignore unknown
# variables), and the rows say "cache off" from what /metrics shows.
CACHE_MAX_BYTES = 1024 * 1024 * 1024


def cache_environment(directory: Path | None) -> dict[str, str]:
    """CACHE_DIR and CACHE_MAX_BYTES: a cache in `directory`, or none (0)."""
    if directory is None:
        return {"CACHE_MAX_BYTES": "0"}
    return {"CACHE_DIR": str(directory), "CACHE_MAX_BYTES": str(CACHE_MAX_BYTES)}


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


async def wait_ready(
    url: str, process: asyncio.subprocess.Process, log: Path, path: str = "/readyz"
) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(600):
            if process.returncode is not None:
                raise RuntimeError(f"app exited ({process.returncode}):\n{processes.tail(log)}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{url}{path}") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise RuntimeError(f"app not ready after 30 s:\n{processes.tail(log)}")


@contextlib.asynccontextmanager
async def running(
    database_url: str,
    media_dir: Path,
    run: Path,
    workers: int,
    cpus: frozenset[int] | None,
    *,
    cache_dir: Path | None,
    ca_bundle: Path | None = None,
) -> AsyncIterator[App]:
    """The app on a free port, ready; with a read-through cache in
    `cache_dir` (None: CACHE_MAX_BYTES=0) and `ca_bundle` trusted for
    HTTPS origins. Stopped with SIGTERM on the way out."""
    port = processes.free_port()
    log = run / f"app-{port}.log"
    env = {**environment(database_url, media_dir, port, workers), **cache_environment(cache_dir)}
    if ca_bundle is not None:
        env["UPSTREAM_CA_BUNDLE"] = str(ca_bundle)
    process = await processes.spawn(
        sys.executable, str(ROOT / "server.py"), cpus=cpus, log=log, env=env, cwd=ROOT
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


@dataclass(frozen=True)
class Bare:
    url: str  # /file and /pipe under it
    pids: tuple[int, ...]


@contextlib.asynccontextmanager
async def bare(
    file: Path, origin_url: str, run: Path, workers: int, cpus: frozenset[int] | None
) -> AsyncIterator[Bare]:
    """bench/bare.py as `workers` processes on one port (SO_REUSEPORT),
    pinned like the app; ready when /file answers."""
    port = processes.free_port()
    log = run / f"bare-{port}.log"
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TZ")}
    started = []
    try:
        for _ in range(workers):
            started.append(
                await processes.spawn(
                    sys.executable,
                    "-m",
                    "bench.bare",
                    str(port),
                    str(file),
                    origin_url,
                    cpus=cpus,
                    log=log,
                    env={**env, "PYTHONUNBUFFERED": "1"},
                    cwd=ROOT,
                )
            )
        url = f"http://127.0.0.1:{port}"
        await wait_ready(url, started[0], log, path="/file")
        yield Bare(url=url, pids=tuple(p.pid for p in started))
    finally:
        for process in started:
            await processes.stop(process, sig=signal.SIGTERM)
