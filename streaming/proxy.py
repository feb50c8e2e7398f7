"""Remote audio piped from its origin, or (STREAM_MODE=redirect) pointed at.

Request headers that make Range and revalidation work go to the origin;
from its answer an allowlist of headers comes back, and the body is written
on chunk by chunk as it arrives, never held whole. A problem can be
answered only before the first byte: after it, a failing origin or an
endless trickle cuts the connection, which tells the listener the body is
short.
"""

import asyncio
import logging
import time

import aiohttp
from aiohttp import web

from db.clips import Row
from db.plays import PLAYS
from metrics.registry import METRICS
from settings import SETTINGS
from streaming.plays import STREAM_SOURCE, is_play_request, tracked
from streaming.upstream import UPSTREAM, UpstreamRefused
from web.problems import Problem

log = logging.getLogger(__name__)

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


def redirect_remote(request: web.Request, clip: Row) -> web.StreamResponse:
    """STREAM_MODE=redirect: the bytes never pass through here, so the play
    is judged by the request's Range, then the player goes to the origin."""
    if is_play_request(request.method, request.headers.get("Range")):
        request.app[PLAYS].record(clip["id"])
    raise web.HTTPFound(clip["audio_url"], headers={"Cache-Control": "no-store"})


async def send_remote(request: web.Request, clip: Row) -> web.StreamResponse:
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
