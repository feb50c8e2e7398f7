"""What every harness run stands on, shared by `make bench` and `make soak`:
the machine prepared (tools, fd limit, cores), then origin, PostgreSQL,
catalogue and the app started fresh in one temporary directory.

`running` enters the parts in one exit stack, so they are stopped and
deleted in reverse order on success, failure, Ctrl-C or SIGTERM alike.
"""

import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench import catalogue, database, origin, processes, service
from bench.catalogue import Catalogue
from bench.origin import Origin
from bench.processes import Cores
from bench.service import App


@dataclass(frozen=True)
class Host:
    notes: list[str]  # what had to be installed, or could not be
    fd_limit: int
    cores: Cores


def prepare(pin: str) -> Host:
    """Install nginx and wrk if missing, lift the fd limit children inherit,
    split the cores, and move this process onto the load generator's core:
    the harness's own clients (probes, slow readers) are load too."""
    notes = origin.ensure_tools()
    fd_limit = processes.raise_fd_limit()
    cores = Cores.split(pin)
    if cores.load:
        os.sched_setaffinity(0, cores.load)
    return Host(notes=notes, fd_limit=fd_limit, cores=cores)


def stop_on_sigterm() -> None:
    def terminate(signum, frame):
        raise KeyboardInterrupt  # unwinds the exit stack like Ctrl-C

    signal.signal(signal.SIGTERM, terminate)


@dataclass(frozen=True)
class Rig:
    scratch: Path  # the run's temporary directory
    origin: Origin
    database_url: str
    media_dir: Path
    catalogue: Catalogue
    app: App
    session: aiohttp.ClientSession  # the harness's own probes and scrapes


@contextlib.asynccontextmanager
async def running(database_url: str | None, workers: int, cores: Cores) -> AsyncIterator[Rig]:
    """Origin, a fresh migrated database, the seeded catalogue and the app
    (`workers` processes, its read-through cache in the run's directory,
    trusting the HTTPS origin's CA), servers pinned to `cores.servers`."""
    async with contextlib.AsyncExitStack() as stack:
        scratch = Path(tempfile.mkdtemp(prefix="soundverse-bench-"))
        stack.callback(shutil.rmtree, scratch, ignore_errors=True)
        audio = catalogue.write_audio(scratch / "www")
        the_origin = await stack.enter_async_context(
            origin.running(scratch / "www", scratch, cores.servers)
        )
        url = await stack.enter_async_context(
            database.fresh(database_url, scratch / "pg", cores.servers)
        )
        media_dir = scratch / "media"
        the_catalogue = await catalogue.seed(
            url, audio, media_dir, the_origin.url, the_origin.https_url
        )
        app = await stack.enter_async_context(
            service.running(
                url,
                media_dir,
                scratch,
                workers,
                cores.servers,
                cache_dir=scratch / "cache",
                ca_bundle=the_origin.ca_bundle,
            )
        )
        session = await stack.enter_async_context(aiohttp.ClientSession())
        yield Rig(
            scratch=scratch,
            origin=the_origin,
            database_url=url,
            media_dir=media_dir,
            catalogue=the_catalogue,
            app=app,
            session=session,
        )
