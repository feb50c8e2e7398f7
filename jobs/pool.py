"""The processes jobs run in: off the event loop, and away from the server
itself (a C decoder crashing on a crafted file takes down only its job
process).

One single-process executor per runner (jobs/runner.py), started on first
use from a forkserver (a fork of a small server process, never of the app
with its threads), so that a job that overruns JOB_TIMEOUT_SECONDS can be
killed on its own and its process replaced, as streaming/audio.py does for
uploads.
"""

import asyncio
import concurrent.futures
import contextlib
import multiprocessing
import os
import signal
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

T = TypeVar("T")


class JobTimeout(Exception):
    """The job overran its time; its process was killed."""


class JobCrashed(Exception):
    """The job's process died (a crash in a decoder, or killed)."""


def ignore_interrupts() -> None:
    """Ctrl-C reaches the whole process group; the app decides when its job
    processes stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class JobProcess:
    """One process, replaced when a job overruns or crashes it."""

    def __init__(self) -> None:
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(["jobs.media"])
        self._executor: concurrent.futures.ProcessPoolExecutor | None = None
        self.pid: int | None = None

    def _spawn(self) -> tuple[concurrent.futures.ProcessPoolExecutor, int]:
        executor = concurrent.futures.ProcessPoolExecutor(
            1, mp_context=self._context, initializer=ignore_interrupts
        )
        return executor, executor.submit(os.getpid).result()

    async def _start(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._executor is None:
            # In a thread: starting the process (and, the first time, the
            # forkserver, which imports the decoders) takes a second or more,
            # during which the event loop must keep renewing leases.
            spawning = asyncio.ensure_future(asyncio.to_thread(self._spawn))
            try:
                self._executor, self.pid = await asyncio.shield(spawning)
            except asyncio.CancelledError:
                # Stopping meanwhile: the thread cannot be stopped, so let
                # the process finish starting and be closed with the rest
                # (one whose parent leaves mid-start dies with a traceback).
                self._executor, self.pid = await spawning
                raise
        return self._executor

    async def run(self, seconds: float, function: Callable[..., T], *args: object) -> T:
        """`function(*args)` in the process, within `seconds`. Raises what
        it raises, JobTimeout or JobCrashed."""
        executor = await self._start()
        try:
            async with asyncio.timeout(seconds):
                return await asyncio.get_running_loop().run_in_executor(executor, function, *args)
        except TimeoutError:
            self.kill()
            raise JobTimeout(f"it took longer than JOB_TIMEOUT_SECONDS ({seconds:g} s)") from None
        except BrokenProcessPool:
            self.kill()
            raise JobCrashed("its process died") from None
        except asyncio.CancelledError:
            self.kill()  # stopping: the process may be mid-job
            raise

    def kill(self) -> None:
        """Kill the process (if any); the next run starts a fresh one."""
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor, self.pid = None, None

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, True, cancel_futures=True)
