"""The play rule, and the accounting of every stream from start to end.

A play is counted the moment a stream starts (README, "When a play
counts"), decided from the request *and* the response, so that no origin
can turn a seek into a play by ignoring its Range: the request asks for
the start (no Range, or a range from byte 0 reaching at least 64 KiB or
the end: `asks_for_play`), and the response is a non-empty 200, or a 206
from byte 0 reaching 64 KiB or the end (`is_play`). Seeks, suffix ranges,
Safari's `bytes=0-1` probe, HEAD, 304, 416 and errors never count. Where
the bytes never pass through here (STREAM_MODE=redirect), the request
alone decides.
"""

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from aiohttp import web

from db.clips import Row
from db.plays import PLAYS
from metrics.registry import METRICS
from settings import Settings
from streaming.dedup import PLAY_DEDUP
from streaming.ranges import ByteRange, content_range
from web.requestlog import BODY_BYTES

MIN_PLAY_BYTES = 64 * 1024

# Set by the route: which clip this stream plays and the range it asks for;
# by the sender: from where ("stored" or "remote"); then by count_play:
# that the stream started.
STREAM_CLIP = web.RequestKey("STREAM_CLIP", int)
STREAM_RANGE = web.RequestKey("STREAM_RANGE", ByteRange | None)
STREAM_SOURCE = web.RequestKey("STREAM_SOURCE", str)  # "stored" or "remote"
STREAM_STARTED = web.RequestKey("STREAM_STARTED", bool)


def record_play(request: web.Request, clip_id: int) -> None:
    """Count the play, unless it repeats a listener's (PLAY_DEDUP_SECONDS)."""
    dedup = request.app.get(PLAY_DEDUP)
    if dedup is not None and not dedup.first(clip_id, request):
        request.app[METRICS].plays_repeated.inc()
        return
    request.app[PLAYS].record(clip_id)


def asks_for_play(requested: ByteRange | None, size: int | None = None) -> bool:
    """The request's half of the rule: the whole clip, or a range from byte
    0 reaching 64 KiB or (when the size is known) the end."""
    if requested is None:
        return True
    if not requested.from_start:
        return False
    last = requested.last
    return last is None or last + 1 >= MIN_PLAY_BYTES or (size is not None and last + 1 >= size)


def is_play(
    method: str,
    requested: ByteRange | None,
    status: int,
    content_range_value: str | None,
    length: int | None,
) -> bool:
    """Both halves. `length` is the 200 body's size (None: unknown)."""
    if method != "GET" or status not in (200, 206):
        return False
    if status == 206:
        sent = content_range(content_range_value)
        if sent is None or sent[0] != 0:
            return False
        covers, size = sent[1] + 1, sent[2]
    else:
        covers = size = length
    reaches = covers is None or (covers > 0 and (covers >= MIN_PLAY_BYTES or covers == size))
    return reaches and asks_for_play(requested, size)


async def count_play(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: record the play the moment a stream starts."""
    clip_id = request.get(STREAM_CLIP)
    if clip_id is None or request.method != "GET" or response.status not in (200, 206):
        return
    metrics = request.app[METRICS]
    request[STREAM_STARTED] = True
    source = request[STREAM_SOURCE]
    metrics.streams_started_of(metrics.clip_label(clip_id), source).inc()
    metrics.streams_in_flight.inc()
    if is_play(
        request.method,
        request.get(STREAM_RANGE),
        response.status,
        response.headers.get("Content-Range"),
        response.content_length,
    ):
        record_play(request, clip_id)


def longest_life(settings: Settings, clip: Row) -> float:
    """Seconds one stream of `clip` may last: its duration times
    STREAM_DURATION_FACTOR plus STREAM_DURATION_SLACK, at most
    STREAM_MAX_SECONDS. A listener who reads (or an origin that sends) so
    slowly that a 30 s preview takes longer is holding a connection, not
    listening."""
    by_clip = clip["duration_seconds"] * settings.stream_duration_factor
    return min(settings.stream_max_seconds, by_clip + settings.stream_duration_slack)


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
            metrics.streams_ended_of(outcome.reason).inc()
            metrics.stream_bytes_of(source).inc(outcome.sent)
            request[BODY_BYTES] = outcome.sent
