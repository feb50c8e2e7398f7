"""Plays: the atomic counting statement and the writer that batches it.

A play must never cost the listener a database round trip before the first
byte, and must never be lost. `PlayCounter.record()` is synchronous and
instant; one background task commits whatever has accumulated in a single
atomic statement (group commit): one write when idle, one write per round
trip under load, however many streams start. Plays that cannot be written
(PostgreSQL down) stay pending and are retried; shutdown flushes them.
"""

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from asyncpg import Connection, Pool

from db import POOL, translated
from db.queries import SQL

log = logging.getLogger(__name__)


@translated
async def count_plays(conn: Pool | Connection, plays: Counter[int]) -> None:
    clip_ids = sorted(plays)
    await conn.execute(SQL["count_plays"], clip_ids, [plays[i] for i in clip_ids])


class PlayCounter:
    RETRY_DELAYS = (0.1, 0.25, 0.5, 1.0, 2.0)  # seconds, the last one repeats

    def __init__(
        self,
        pool: Pool,
        on_commit: Callable[[int], None] = lambda plays: None,
        on_failure: Callable[[], None] = lambda: None,
    ):
        self._pool = pool
        self._on_commit = on_commit
        self._on_failure = on_failure
        self._pending: Counter[int] = Counter()
        self._writing = False
        self._wake = asyncio.Event()
        self._settled = asyncio.Condition()

    @property
    def pending(self) -> int:
        return sum(self._pending.values())

    def record(self, clip_id: int) -> None:
        self._pending[clip_id] += 1
        self._wake.set()

    async def run(self) -> None:
        failures = 0
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._pending:
                continue
            batch, self._pending = self._pending, Counter()
            self._writing = True
            try:
                await count_plays(self._pool, batch)
            except Exception as error:
                self._on_failure()
                self._pending.update(batch)
                delay = self.RETRY_DELAYS[min(failures, len(self.RETRY_DELAYS) - 1)]
                failures += 1
                log.warning(
                    "%d plays not written yet (%s); retrying in %.2fs",
                    sum(batch.values()),
                    error,
                    delay,
                )
                self._writing = False
                await asyncio.sleep(delay)
                self._wake.set()
                continue
            failures = 0
            self._writing = False
            self._on_commit(sum(batch.values()))
            async with self._settled:
                self._settled.notify_all()

    async def flush(self) -> None:
        """Return once every play recorded so far is committed."""
        async with self._settled:
            await self._settled.wait_for(lambda: not self._pending and not self._writing)


PLAYS = web.AppKey("PLAYS", PlayCounter)


def plays_ctx(
    on_commit: Callable[[int], None],
    on_failure: Callable[[], None],
    shutdown_timeout: float = 10.0,
):
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        counter = PlayCounter(app[POOL], on_commit, on_failure)
        app[PLAYS] = counter
        task = asyncio.create_task(counter.run(), name="play-counter")
        try:
            yield
            try:
                async with asyncio.timeout(shutdown_timeout):
                    await counter.flush()
            except TimeoutError:
                log.error("shutdown: %d plays could not be written", counter.pending)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    return ctx
