"""Clip rows for the stream path, kept briefly in memory.

A stream needs its clip's source (URL or file) and content type, which
rarely change: reading them from PostgreSQL on every request would put a
database round trip in front of every first byte. Rows are kept for
CLIP_CACHE_SECONDS (0: ask every time); concurrent misses for one clip share a single query;
and while PostgreSQL is unreachable, a row already known is served stale,
so clips keep playing through a database restart (their plays wait in the
PlayCounter). Unknown ids are never cached: a clip created a moment ago
streams at once.
"""

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator

from aiohttp import web
from asyncpg import Pool, Record

from db import POOL, DatabaseUnavailable, clips
from settings import SETTINGS


class ClipCache:
    def __init__(self, pool: Pool, ttl: float, max_entries: int = 10_000):
        self._pool = pool
        self._ttl = ttl
        self._max_entries = max_entries
        self._rows: OrderedDict[int, tuple[float, Record]] = OrderedDict()
        self._loading: dict[int, asyncio.Future[Record | None]] = {}

    async def get(self, clip_id: int, fresh: bool = False) -> Record | None:
        """The clip's row, or None; raises DatabaseUnavailable only when
        PostgreSQL is away and the clip was never seen. `fresh`: read it
        from PostgreSQL even if a row is kept (still served stale while
        PostgreSQL is away)."""
        known = self._rows.get(clip_id)
        if not fresh and known is not None and time.monotonic() - known[0] < self._ttl:
            return known[1]
        loading = self._loading.get(clip_id)
        if loading is None:
            loading = asyncio.ensure_future(clips.get_clip(self._pool, clip_id))
            self._loading[clip_id] = loading
            loading.add_done_callback(lambda _: self._loading.pop(clip_id, None))
        try:
            row = await asyncio.shield(loading)
        except DatabaseUnavailable:
            if known is not None:
                return known[1]  # stale beats failing while the database is away
            raise
        self._remember(clip_id, row)
        return row

    def _remember(self, clip_id: int, row: Record | None) -> None:
        if row is None:
            self._rows.pop(clip_id, None)
            return
        self._rows[clip_id] = (time.monotonic(), row)
        self._rows.move_to_end(clip_id)
        while len(self._rows) > self._max_entries:
            self._rows.popitem(last=False)

    def forget(self, clip_id: int) -> None:
        """Drop a clip this process changed or deleted."""
        self._rows.pop(clip_id, None)


CLIP_CACHE = web.AppKey("CLIP_CACHE", ClipCache)


async def clip_cache_ctx(app: web.Application) -> AsyncIterator[None]:
    app[CLIP_CACHE] = ClipCache(app[POOL], app[SETTINGS].clip_cache_seconds)
    yield
