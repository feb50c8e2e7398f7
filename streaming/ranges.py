"""Range and conditional requests on a representation whose size and
modification time are known (RFC 9110 §13-14): which part, if any, to send.

As aiohttp's FileResponse decides them: If-None-Match before
If-Modified-Since, If-Range by date, one byte range, 416 (a problem) when it
starts past the end or cannot be read.
"""

from aiohttp import web

from web.problems import Problem


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
