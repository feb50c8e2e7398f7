"""Stored audio: a file in MEDIA_DIR answered with Range, conditional
requests and the kernel's sendfile.

aiohttp's FileResponse does the same, but opens, stats and closes every file
on a worker thread: two thread hops per request that, measured with `make
bench` (stored clip, one core), cost 1.4-1.9x the requests per second of
doing those syscalls on the event loop. MEDIA_DIR is a local directory whose
hot files sit in the page cache, so here they run inline. The rules follow
FileResponse's (and RFC 9110): ETag `"<mtime_ns>-<size>"` in hex,
If-None-Match before If-Modified-Since, If-Range by date, one byte range,
416 when it starts past the end (here as a problem, like every error).
"""

import asyncio
import os
from pathlib import Path

from aiohttp import web

from handlers.problems import Problem


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
            self.offset, self.count = 0, stat.st_size
            self.response = web.StreamResponse(headers={"Accept-Ranges": "bytes"})
            self.response.content_type = content_type
            etag = f"{stat.st_mtime_ns:x}-{stat.st_size:x}"
            self.response.etag = etag
            self.response.last_modified = stat.st_mtime
            if not_modified(request, etag, stat.st_mtime):
                self.response.set_status(304)
                self.count = 0
            elif (part := byte_range(request, stat.st_size, stat.st_mtime)) is not None:
                self.offset, self.count = part
                last = self.offset + self.count - 1
                self.response.set_status(206)
                self.response.headers["Content-Range"] = (
                    f"bytes {self.offset}-{last}/{stat.st_size}"
                )
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


def not_modified(request: web.Request, etag: str, mtime: float) -> bool:
    if (tags := request.if_none_match) is not None:
        return any(tag.value in ("*", etag) for tag in tags)  # weak comparison
    since = request.if_modified_since
    return since is not None and mtime <= since.timestamp()


def byte_range(request: web.Request, size: int, mtime: float) -> tuple[int, int] | None:
    """(offset, count) of the part asked for; None for the whole file."""
    if "Range" not in request.headers:
        return None
    if (if_range := request.if_range) is not None and mtime > if_range.timestamp():
        return None  # changed since the client's copy: send it all
    unsatisfiable = {"Content-Range": f"bytes */{size}"}
    try:
        start, stop = request.http_range.start, request.http_range.stop
    except ValueError:
        raise Problem(
            416, f"Range {request.headers['Range'][:100]!r} is malformed", headers=unsatisfiable
        ) from None
    if start is None:
        return None
    if start < 0 and stop is None:  # the last -start bytes
        start = max(size + start, 0)
    end = size if stop is None else min(stop, size)
    if start >= size:
        raise Problem(
            416, f"Range starts at byte {start}, past the audio's {size} bytes",
            headers=unsatisfiable,
        )  # fmt: skip
    return start, end - start
