"""Stored audio: a file of the media store answered with Range, conditional
requests (streaming/ranges.py) and the kernel's sendfile.

aiohttp's FileResponse does the same, but opens, stats and closes every file
on a worker thread: two thread hops per request that, measured with `make
bench` (stored clip, one core), cost 1.4-1.9x the requests per second of
doing those syscalls on the event loop. MEDIA_DIR is a local directory whose
hot files sit in the page cache, so here they run inline. The rules follow
FileResponse's (and RFC 9110): ETag `"<mtime_ns>-<size>"` in hex.
"""

import asyncio
import math
import os
from typing import BinaryIO

from aiohttp import web

from db.clips import Row
from settings import SETTINGS
from storage import MediaStore
from streaming.headers import STREAM_HEADERS
from streaming.plays import STREAM_RANGE, STREAM_SOURCE, Outcome, longest_life, tracked
from streaming.ranges import if_range_holds, not_modified
from web.problems import Problem

# A listener must take 256 KiB per STREAM_SEND_TIMEOUT (70 kbit/s at 30 s):
# the whole body gets that pace as one deadline around one sendfile call,
# rather than a sendfile call, a write-buffer flush and a timer per piece.
SEND_PIECE_BYTES = 256 * 1024


class StoredFile:
    """An open audio file and the response a request for it gets. Use as a
    context manager: the file is closed when the block ends."""

    def __init__(self, request: web.Request, file: BinaryIO, content_type: str):
        self.file = file
        try:
            stat = os.fstat(self.file.fileno())
            size = stat.st_size
            self.offset, self.count = 0, size
            self.response = web.StreamResponse(headers={**STREAM_HEADERS, "Accept-Ranges": "bytes"})
            self.response.content_type = content_type
            self.response.etag = f"{stat.st_mtime_ns:x}-{size:x}"
            self.response.last_modified = stat.st_mtime
            etag = self.response.headers["ETag"]
            last_modified = self.response.headers["Last-Modified"]
            wanted = request[STREAM_RANGE]
            if not_modified(request, etag, last_modified):
                self.response.set_status(304)
                self.count = 0
            elif wanted is not None and if_range_holds(request, etag, last_modified):
                self.offset, self.count = wanted.resolve(size)
                last = self.offset + self.count - 1
                self.response.set_status(206)
                self.response.headers["Content-Range"] = f"bytes {self.offset}-{last}/{size}"
            if self.response.status != 304:
                self.response.content_length = self.count
        except BaseException:
            self.file.close()
            raise

    def __enter__(self) -> "StoredFile":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.file.close()

    def pace(self, send_timeout: float) -> float:
        """Seconds the listener gets to take the body: `send_timeout` for
        every SEND_PIECE_BYTES of it."""
        return send_timeout * max(1, math.ceil(self.count / SEND_PIECE_BYTES))

    async def send_body(self, request: web.Request, outcome: Outcome) -> None:
        """After prepare(): the body, by one sendfile (the kernel's whole
        loop, no Python per piece). Counts what is sent in `outcome`."""
        if request.method == "HEAD" or self.count == 0:
            return
        if request.transport is None or request.transport.is_closing():
            raise ConnectionResetError("the listener is gone")
        loop = asyncio.get_running_loop()
        await loop.sendfile(request.transport, self.file, self.offset, self.count)
        outcome.sent = self.count


def stored_variant(clip: Row, variant: str) -> tuple[str, str]:
    """(file name, content type) of what a stream of a stored clip sends:
    its preview once ready, unless `variant` is "original"; else the
    original. Range, validators, the longest life and the play rule are
    the same whichever it is."""
    if variant != "original" and clip["preview_status"] == "ready":
        return clip["preview_path"], clip["preview_content_type"]
    return clip["media_path"], clip["content_type"]


async def send_stored(
    request: web.Request, store: MediaStore, clip: Row, variant: str = "original"
) -> web.StreamResponse:
    """The clip's stored file (`variant`: see stored_variant) as the answer
    to `request`, tracked as a stream: dropped when the listener accepts
    nothing for STREAM_SEND_TIMEOUT (`send_timeout`) or outlives the clip's
    longest life (`timeout`). A file that is not there is a 404; one that
    cannot be read, a storage 500."""
    request[STREAM_SOURCE] = "stored"
    settings = request.app[SETTINGS]
    name, content_type = stored_variant(clip, variant)
    file = store.open(name)
    if file is None:
        raise Problem(404, "The clip's audio file is missing")
    with StoredFile(request, file, content_type) as stored, tracked(request) as outcome:
        await stored.response.prepare(request)
        life = longest_life(settings, clip)
        pace = stored.pace(settings.stream_send_timeout)
        try:
            # One deadline, the nearer of the two, around one sendfile.
            async with asyncio.timeout(min(life, pace)):
                await stored.send_body(request, outcome)
                await stored.response.write_eof()
        except TimeoutError:
            outcome.reason = "timeout" if life <= pace else "send_timeout"
            if request.transport is not None:
                request.transport.abort()  # what it holds would never reach it
    return stored.response
