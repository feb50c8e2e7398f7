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
import os
from pathlib import Path

from aiohttp import web

from streaming.headers import STREAM_HEADERS
from streaming.plays import STREAM_RANGE, STREAM_SOURCE, tracked
from streaming.ranges import if_range_holds, not_modified
from web.problems import Problem


class StoredFile:
    """An open audio file and the response a request for it gets. Use as a
    context manager: the file is closed when the block ends."""

    def __init__(self, request: web.Request, path: Path, content_type: str):
        try:
            self.file = path.open("rb")
        except OSError:
            raise Problem(404, "The clip's audio file is missing") from None
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

    async def send_body(self, request: web.Request) -> int:
        """After prepare(): the body, by sendfile. Returns the bytes sent."""
        if request.method == "HEAD" or self.count == 0:
            return 0
        if request.transport is None:
            raise ConnectionResetError("the listener is gone")
        await asyncio.get_running_loop().sendfile(
            request.transport, self.file, self.offset, self.count
        )
        return self.count


async def send_stored(request: web.Request, path: Path, content_type: str) -> web.StreamResponse:
    """The stored file at `path` as the answer to `request`, tracked as a stream."""
    request[STREAM_SOURCE] = "stored"
    with StoredFile(request, path, content_type) as stored, tracked(request) as outcome:
        await stored.response.prepare(request)
        outcome.sent = await stored.send_body(request)
        await stored.response.write_eof()
    return stored.response
