"""Stored audio: a file of the media store answered with Range, conditional
requests (streaming/ranges.py) and the kernel's sendfile.

aiohttp's FileResponse does the same, but opens, stats and closes every file
on a worker thread: two thread hops per request that, measured with `make
bench` (stored clip, one core), cost 1.4-1.9x the requests per second of
doing those syscalls on the event loop. MEDIA_DIR is a local directory whose
hot files sit in the page cache, so here they run inline. The rules follow
FileResponse's (and RFC 9110): ETag `"<mtime_ns>-<size>"` in hex (a preview's
with `-preview` after it).
"""

import asyncio
import functools
import math
import os
import time
from typing import BinaryIO

from aiohttp import web

from db.clips import Row
from settings import SETTINGS
from storage import MediaStore
from streaming.headers import STREAM_HEADERS
from streaming.plays import STREAM_RANGE, STREAM_SOURCE, longest_life, tracked
from streaming.ranges import if_range_holds, not_modified
from web.problems import Problem

# A listener must take 256 KiB per STREAM_SEND_TIMEOUT (70 kbit/s at 30 s):
# the whole body gets that pace as one deadline around one sendfile call,
# rather than a sendfile call, a write-buffer flush and a timer per piece.
SEND_PIECE_BYTES = 256 * 1024


@functools.lru_cache(maxsize=1024)
def http_date_of(seconds: int) -> str:
    """Last-Modified for a file modified at `seconds` (rounded up, as
    aiohttp does), formatted once per distinct time: a hot clip is sent
    again and again."""
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(seconds))


class StoredFile:
    """An open audio file and the response a request for it gets. Use as a
    context manager: the file is closed when the block ends.

    A stored clip's validators come from the file (ETag `"<mtime_ns>-<size>"`
    in hex, `etag_suffix` after it, its mtime as Last-Modified). A cached remote clip
    (streaming/cache.py) passes its origin's instead, as the header values
    the origin sent (either may be None), and its `size` when the file is
    still being filled: a listener sees the same validators whether the
    clip is piped or served from the cache, so conditional requests and
    If-Range keep working across a fill."""

    def __init__(
        self,
        request: web.Request,
        file: BinaryIO,
        content_type: str,
        *,
        size: int | None = None,
        validators: tuple[str | None, str | None] | None = None,
        etag_suffix: str = "",
    ):
        self.file = file
        try:
            if validators is None:
                stat = os.fstat(self.file.fileno())
                size = stat.st_size
                # As aiohttp's etag and last_modified setters write them.
                etag = f'"{stat.st_mtime_ns:x}-{size:x}{etag_suffix}"'
                last_modified = http_date_of(math.ceil(stat.st_mtime))
            else:
                etag, last_modified = validators
            # The headers written once, not through aiohttp's setters.
            headers = {**STREAM_HEADERS, "Accept-Ranges": "bytes", "Content-Type": content_type}
            if etag is not None:
                headers["ETag"] = etag
            if last_modified is not None:
                headers["Last-Modified"] = last_modified
            self.response = web.StreamResponse(headers=headers)
            self.size = size
            self.offset, self.count = 0, size
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

    def body_bytes(self, request: web.Request) -> int:
        """The body this response sends: none for HEAD and 304."""
        return 0 if request.method == "HEAD" else self.count

    def send_at_once(self, request: web.Request) -> int:
        """After prepare(): hand the body to the kernel with one sendfile
        call, straight on the socket, without waiting. A listener keeping
        up has room for a whole clip in its socket's buffer, and then none
        of loop.sendfile's machinery runs (pausing and resuming reading, a
        future, a deadline timer). Returns the bytes sent: fewer when the
        buffer was full, 0 when the socket is not ours to write to yet
        (headers still queued in the transport) or not a plain socket."""
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the listener is gone")
        if transport.get_write_buffer_size() or transport.get_extra_info("sslcontext"):
            return 0
        sock = transport.get_extra_info("socket")
        try:
            return os.sendfile(sock.fileno(), self.file.fileno(), self.offset, self.count)
        except (BlockingIOError, InterruptedError):
            return 0
        except ConnectionError:
            raise
        except OSError:
            return 0  # a file sendfile cannot take: loop.sendfile copies it instead

    async def send_body(self, request: web.Request, sent: int) -> None:
        """The rest of the body after `sent` bytes, by one loop.sendfile (the
        kernel's whole loop while the listener reads, no Python per piece)."""
        if request.transport is None or request.transport.is_closing():
            raise ConnectionResetError("the listener is gone")
        loop = asyncio.get_running_loop()
        await loop.sendfile(request.transport, self.file, self.offset + sent, self.count - sent)


def stored_variant(clip: Row, variant: str) -> tuple[str, str]:
    """(file name, content type) of what a stream of a stored clip sends:
    its preview once ready, unless `variant` is "original"; else the
    original. Range, validators, the longest life and the play rule are
    the same whichever it is."""
    if variant != "original" and clip["preview_status"] == "ready":
        return clip["preview_path"], clip["preview_content_type"]
    return clip["media_path"], clip["content_type"]


# A preview's ETag ends in this, an original's never does: the two never
# share one, whatever their files' times and sizes (a restore from backup
# can give both the same second), so If-Range or If-None-Match naming the
# original never matches the preview a plain URL now plays.
PREVIEW_ETAG_SUFFIX = "-preview"


async def send_stored(
    request: web.Request, store: MediaStore, clip: Row, variant: str = "original"
) -> web.StreamResponse:
    """The clip's stored file (`variant`: see stored_variant) as the answer
    to `request`, tracked as a stream: dropped when the listener accepts
    nothing for STREAM_SEND_TIMEOUT (`send_timeout`) or outlives the clip's
    longest life (`timeout`). A file that is not there is a 404; one that
    cannot be read, a storage 500."""
    request[STREAM_SOURCE] = "stored"
    name, content_type = stored_variant(clip, variant)
    file = store.open(name)
    if file is None:
        raise Problem(404, "The clip's audio file is missing")
    suffix = PREVIEW_ETAG_SUFFIX if name != clip["media_path"] else ""
    with StoredFile(request, file, content_type, etag_suffix=suffix) as stored:
        await send_file(request, stored, clip)
    return stored.response


async def send_file(request: web.Request, stored: StoredFile, clip: Row) -> None:
    """Prepare `stored`'s response and send its body with one sendfile under
    one deadline, the nearer of the clip's longest life and the listener's
    pace; the stream is tracked (streaming/plays.py). Stored clips and hot
    cache entries (streaming/cache.py) alike."""
    settings = request.app[SETTINGS]
    with tracked(request) as outcome:
        await stored.response.prepare(request)
        body = stored.body_bytes(request)
        sent = stored.send_at_once(request) if body else 0
        if sent == body:  # all of it in the kernel's hands already: no deadline needed
            outcome.sent = sent
            await stored.response.write_eof()
            return
        life = longest_life(settings, clip)
        pace = stored.pace(settings.stream_send_timeout)
        try:
            # One deadline, the nearer of the two, around one sendfile.
            async with asyncio.timeout(min(life, pace)):
                await stored.send_body(request, sent)
                outcome.sent = body
                await stored.response.write_eof()
        except TimeoutError:
            outcome.reason = "timeout" if life <= pace else "send_timeout"
            if request.transport is not None:
                request.transport.abort()  # what it holds would never reach it
