"""The play rule, and the accounting of every stream from start to end.

A play is counted the moment a stream starts, decided from the response
actually sent (is_play): a GET whose response starts with status 200, or
206 from byte 0 covering at least 64 KiB (or the whole file). Seeks, HEAD,
304, 416 and errors never count, nor does Safari's `bytes=0-1` probe. Where
the bytes never pass through here (STREAM_MODE=redirect), the same rule is
read from the request (is_play_request).
"""

import asyncio
import re
from collections.abc import Iterator
from contextlib import contextmanager

from aiohttp import web

from db.plays import PLAYS
from metrics.registry import METRICS
from web.requestlog import BODY_BYTES

MIN_PLAY_BYTES = 64 * 1024
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")

# Set by the route: which clip this stream plays; by the sender: from where
# ("stored" or "remote"); then by count_play: that the stream started.
STREAM_CLIP = web.RequestKey("STREAM_CLIP", int)
STREAM_SOURCE = web.RequestKey("STREAM_SOURCE", str)  # "stored" or "remote"
STREAM_STARTED = web.RequestKey("STREAM_STARTED", bool)


def is_play(method: str, status: int, content_range: str | None) -> bool:
    if method != "GET":
        return False
    if status == 200:
        return True
    if status != 206 or content_range is None:
        return False
    match = _CONTENT_RANGE.fullmatch(content_range)
    if match is None:
        return False
    start, end, total = int(match[1]), int(match[2]), match[3]
    whole = total != "*" and end + 1 == int(total)
    return start == 0 and (end + 1 >= MIN_PLAY_BYTES or whole)


async def count_play(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: record the play the moment a stream starts."""
    clip_id = request.get(STREAM_CLIP)
    if clip_id is None or request.method != "GET" or response.status not in (200, 206):
        return
    metrics = request.app[METRICS]
    request[STREAM_STARTED] = True
    source = request[STREAM_SOURCE]
    metrics.streams_started.labels(metrics.clip_label(clip_id), source).inc()
    metrics.streams_in_flight.inc()
    if is_play(request.method, response.status, response.headers.get("Content-Range")):
        request.app[PLAYS].record(clip_id)


class Outcome:
    """How a started stream ended, and how many body bytes it sent."""

    def __init__(self) -> None:
        self.reason = "complete"
        self.sent = 0


@contextmanager
def tracked(request: web.Request) -> Iterator[Outcome]:
    """Count how a started stream ends; the body loop sets the outcome's
    reason when it stops early. A listener leaving ends the block quietly."""
    outcome = Outcome()
    try:
        yield outcome
    except asyncio.CancelledError:
        outcome.reason = "client_gone"
        raise
    except ConnectionError:
        # The listener left while we wrote: the stream is over, nothing is
        # wrong, and there is nobody left to answer.
        outcome.reason = "client_gone"
    finally:
        if request.get(STREAM_STARTED):
            source = request[STREAM_SOURCE]
            metrics = request.app[METRICS]
            metrics.streams_in_flight.dec()
            metrics.streams_ended.labels(outcome.reason).inc()
            metrics.stream_bytes.labels(source).inc(outcome.sent)
            request[BODY_BYTES] = outcome.sent


def is_play_request(method: str, range_header: str | None) -> bool:
    """is_play, read from the request: no Range, `bytes=0-` or `bytes=0-N`
    spanning at least 64 KiB. (A whole file shorter than that, asked for
    with a closed range, cannot be recognised without its size.)"""
    if method != "GET":
        return False
    if range_header is None:
        return True
    match = re.fullmatch(r"bytes=0-(\d*)", range_header.strip())
    return match is not None and (not match[1] or int(match[1]) + 1 >= MIN_PLAY_BYTES)
