"""GET/HEAD /clips/{id}/stream: the clip's audio, seekable, counted once per play.

Remote clips are piped from their origin through the app's shared client
session; stored clips are sent from MEDIA_DIR with the kernel's sendfile.
Both honour Range and conditional requests, so `<audio>` can seek.

The counting rule, decided from the response actually sent (see is_play):
a GET whose response starts with status 200, or 206 from byte 0 covering at
least 64 KiB (or the whole file). Seeks, HEAD, 304, 416 and errors never
count, nor does Safari's `bytes=0-1` probe.
"""

import asyncio
import logging
import re
import time
from contextlib import contextmanager

import aiohttp
from aiohttp import web

from db.clip_cache import CLIP_CACHE
from db.plays import PLAYS
from handlers.access import BODY_BYTES
from handlers.metrics import METRICS
from handlers.params import parse_id
from handlers.problems import Problem
from handlers.stored import StoredFile
from handlers.upstream import UPSTREAM, UpstreamRefused
from settings import SETTINGS

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

FORWARD_REQUEST = ("Range", "If-Range", "If-None-Match", "If-Modified-Since")
FORWARD_RESPONSE = (
    "Content-Type",
    "Content-Length",
    "Content-Range",
    "Accept-Ranges",
    "ETag",
    "Last-Modified",
    "Content-Encoding",
)
MIN_PLAY_BYTES = 64 * 1024
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")

# Set by the handler: which clip this stream plays and from where; then by
# count_play: that the stream actually started.
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
def tracked(request: web.Request):
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


@routes.get("/clips/{clip_id}/stream")
async def stream_clip(request: web.Request) -> web.StreamResponse:
    clip_id = parse_id(request.match_info["clip_id"])
    clip = await request.app[CLIP_CACHE].get(clip_id)
    if clip is None:
        raise Problem(404, f"No clip has id {clip_id}")
    request[STREAM_CLIP] = clip_id
    if clip["media_path"] is not None:
        return await send_stored(request, clip)
    if request.app[SETTINGS].stream_mode == "redirect":
        return redirect_remote(request, clip)
    return await send_remote(request, clip)


def redirect_remote(request: web.Request, clip) -> web.StreamResponse:
    """STREAM_MODE=redirect: the bytes never pass through here, so the play
    is judged by the request's Range, then the player goes to the origin."""
    if is_play_request(request.method, request.headers.get("Range")):
        request.app[PLAYS].record(clip["id"])
    raise web.HTTPFound(clip["audio_url"], headers={"Cache-Control": "no-store"})


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


async def send_stored(request: web.Request, clip) -> web.StreamResponse:
    path = request.app[SETTINGS].media_dir / clip["media_path"]
    request[STREAM_SOURCE] = "stored"
    with StoredFile(request, path, clip["content_type"]) as stored, tracked(request) as outcome:
        await stored.response.prepare(request)
        outcome.sent = await stored.send_body(request)
        await stored.response.write_eof()
    return stored.response


async def send_remote(request: web.Request, clip) -> web.StreamResponse:
    request[STREAM_SOURCE] = "remote"
    upstream = request.app[UPSTREAM]
    metrics = request.app[METRICS]
    headers = {name: request.headers[name] for name in FORWARD_REQUEST if name in request.headers}
    started = time.perf_counter()
    try:
        origin = await upstream.open(request.method, clip["audio_url"], headers)
    except UpstreamRefused as refused:
        metrics.upstream_requests.labels("refused").inc()
        raise Problem(502, f"The clip's audio origin is refused: {refused}") from None
    except TimeoutError:
        metrics.upstream_requests.labels("timeout").inc()
        raise Problem(504, "The clip's audio origin did not answer in time") from None
    except aiohttp.ClientError as error:
        metrics.upstream_requests.labels("connect_error").inc()
        reason = type(error).__name__
        raise Problem(502, f"The clip's audio origin is unreachable ({reason})") from None
    metrics.upstream_ttfb.observe(time.perf_counter() - started)
    metrics.upstream_requests.labels(
        f"{origin.status // 100}xx" if origin.status >= 400 else "ok"
    ).inc()

    async with origin:
        if origin.status == 416:
            raise Problem(
                416,
                f"Range {request.headers.get('Range')!r} is outside the audio",
                headers={k: v for k, v in origin.headers.items() if k == "Content-Range"},
            )
        if origin.status not in (200, 206, 304):
            raise Problem(502, f"The clip's audio origin answered {origin.status}")
        response = web.StreamResponse(
            status=origin.status,
            headers={k: origin.headers[k] for k in FORWARD_RESPONSE if k in origin.headers},
        )
        if "Content-Type" not in response.headers:
            response.content_type = clip["content_type"]
        with tracked(request) as outcome:
            await response.prepare(request)
            if request.method == "HEAD" or origin.status == 304:
                return response
            try:
                # A trickling or endless origin must not hold a stream forever.
                async with asyncio.timeout(request.app[SETTINGS].stream_max_seconds):
                    async for chunk in origin.content.iter_chunked(upstream.buffer_bytes):
                        await response.write(chunk)
                        outcome.sent += len(chunk)
            except TimeoutError:
                outcome.reason = "timeout"
            except aiohttp.ClientError as error:
                if isinstance(error, ConnectionResetError):
                    raise  # writing to the listener failed: they left
                outcome.reason = "upstream_error"
            if outcome.reason != "complete":
                # Headers are gone: closing the connection is the only way
                # left to tell the listener the body is cut short.
                log.warning("clip %s: upstream %s mid-body", clip["id"], outcome.reason)
                if request.transport is not None:
                    request.transport.close()
                return response
            await response.write_eof()
    return response
