"""Rendered catalogue pages, kept for LIST_CACHE_SECONDS (0: off).

`GET /clips` is the catalogue's front door: every visitor asks for the same
first pages. Rendering one costs a query and JSON for 50 clips (measured:
about 6x the CPU of /healthz per request); a page rendered less than
LIST_CACHE_SECONDS ago is answered from memory instead. Concurrent misses
of one page share a single query.

What a page may miss: plays and edits made meanwhile by other processes
(WORKERS > 1, replicas) or straight in PostgreSQL, for at most
LIST_CACHE_SECONDS. This process's own writes (create, edit, delete) clear
every page at once (`clear`), so a client reads its own changes; a load
that began before such a write is not kept.
"""

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass

from aiohttp import web

# Pages kept at most: a page of 50 clips is ~25 KiB, so about 6 MiB at
# worst. Searches and cursors make the keys unbounded; the least recently
# used page goes first.
MAX_PAGES = 256


@dataclass(frozen=True)
class Page:
    body: bytes  # the JSON array, encoded
    cursor: str | None  # where the next page starts; None on the last


class PageCache:
    def __init__(self, ttl: float, max_pages: int = MAX_PAGES):
        self._ttl = ttl
        self._max_pages = max_pages
        self._pages: OrderedDict[Hashable, tuple[float, Page]] = OrderedDict()
        self._loading: dict[Hashable, asyncio.Future[Page]] = {}
        self._generation = 0  # moves on every clear()

    async def get(self, key: Hashable, render: Callable[[], Awaitable[Page]]) -> Page:
        """The page for `key`: kept, being rendered by another request, or
        rendered now by `render()` (whose errors reach every request
        waiting for it, and are not kept)."""
        if self._ttl <= 0:
            return await render()
        kept = self._pages.get(key)
        if kept is not None and time.monotonic() < kept[0]:
            self._pages.move_to_end(key)
            return kept[1]
        loading = self._loading.get(key)
        if loading is None:
            loading = asyncio.ensure_future(self._load(key, render))
            self._loading[key] = loading
            loading.add_done_callback(lambda done: self._loaded(key, done))
        # Shielded: a listener who leaves does not cancel the others' page.
        return await asyncio.shield(loading)

    async def _load(self, key: Hashable, render: Callable[[], Awaitable[Page]]) -> Page:
        generation, began = self._generation, time.monotonic()
        page = await render()
        if generation == self._generation:  # no write of ours since it began
            self._pages[key] = (began + self._ttl, page)
            self._pages.move_to_end(key)
            while len(self._pages) > self._max_pages:
                self._pages.popitem(last=False)
        return page

    def _loaded(self, key: Hashable, done: asyncio.Future[Page]) -> None:
        if self._loading.get(key) is done:
            del self._loading[key]
        if not done.cancelled():
            done.exception()  # retrieved: every waiter may have left

    def clear(self) -> None:
        """After a write of this process: no page read before it is served
        again, and requests from now on do not wait for a load begun
        before it."""
        self._generation += 1
        self._pages.clear()
        self._loading.clear()


PAGE_CACHE = web.AppKey("PAGE_CACHE", PageCache)
