"""Replicas for tests: several `python server.py` processes, each on its own
loopback port with its own MEDIA_DIR and temporary directory, sharing only
what the environment given to all of them names (one PostgreSQL, a
bucket...), as replicas behind a load balancer share nothing else.

    async with replicas(database_url, tmp_path, count=2, CLIP_CACHE_SECONDS="2") as (a, b):
        async with session.get(a.url("/clips")) as response: ...

Each is started with MIGRATE_ON_START=false (the test database is already
migrated, as a Kubernetes Job would have done) unless `env` says otherwise,
and is yielded once its /readyz answers 200. At the end each gets SIGTERM
and must stop cleanly (exit 0) within its SHUTDOWN_GRACE and the plays'
flush; its log is in the failure message otherwise.
"""

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from tests.support import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Replica:
    port: int
    process: asyncio.subprocess.Process
    log: Path
    media_dir: Path
    temporary: str

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")


async def start_replica(database_url: str, directory: Path, **env: str) -> Replica:
    """One `python server.py` in `directory` (its media, temporary files
    and log live there), once it is ready."""
    port = free_port()
    media_dir = directory / "media"
    media_dir.mkdir(parents=True)
    # A short TMPDIR of its own: pytest's tmp_path can be too long for the
    # Unix sockets the server makes there (it refuses to start then).
    temporary = tempfile.mkdtemp(prefix="replica-")
    log = directory / "server.log"
    environment = {
        **os.environ,
        "PYTHON_DOTENV_DISABLED": "1",
        "DATABASE_URL": database_url,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "MEDIA_DIR": str(media_dir),
        "TMPDIR": temporary,
        "MIGRATE_ON_START": "false",
        "SHUTDOWN_GRACE": "2",
        "UPSTREAM_ALLOW": "127.0.0.1/32",
        **env,
    }
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, ROOT / "server.py", env=environment, stdout=out, stderr=out
        )
    replica = Replica(port, process, log, media_dir, temporary)
    try:
        async with aiohttp.ClientSession() as session:

            async def ready() -> bool:
                assert process.returncode is None, replica.output()
                try:
                    async with session.get(replica.url("/readyz")) as response:
                        return response.status == 200
                except aiohttp.ClientConnectionError:
                    return False

            await wait_until(
                ready, f"replica on port {port} ready", seconds=30, details=replica.output
            )
    except BaseException:
        await kill(replica)
        raise
    return replica


async def kill(replica: Replica) -> None:
    if replica.process.returncode is None:
        replica.process.kill()
        await replica.process.wait()
    shutil.rmtree(replica.temporary, ignore_errors=True)


async def stop(replica: Replica) -> int:
    """SIGTERM, as an orchestrator stops a replica; its exit code."""
    if replica.process.returncode is None:
        replica.process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(20):
                await replica.process.wait()
        except TimeoutError:
            await kill(replica)
    shutil.rmtree(replica.temporary, ignore_errors=True)
    return replica.process.returncode


@contextlib.asynccontextmanager
async def replicas(
    database_url: str, directory: Path, count: int = 2, **env: str
) -> AsyncIterator[list[Replica]]:
    """`count` replicas against `database_url`, started together; each
    stopped with SIGTERM at the end, and each must exit 0."""
    started = await asyncio.gather(
        *(start_replica(database_url, directory / f"replica-{n}", **env) for n in range(count)),
        return_exceptions=True,
    )
    running = [r for r in started if isinstance(r, Replica)]
    failed = [r for r in started if not isinstance(r, Replica)]
    if failed:
        await asyncio.gather(*(kill(r) for r in running))
        raise failed[0]
    try:
        yield running
    finally:
        codes = await asyncio.gather(*(stop(r) for r in running))
    for replica, code in zip(running, codes, strict=True):
        assert code == 0, f"replica on port {replica.port} exited {code}:\n{replica.output()}"
