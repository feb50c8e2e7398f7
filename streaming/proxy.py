"""Remote audio piped from its origin, or (STREAM_MODE=redirect) pointed at.

Whatever the origin does, the listener gets what it asked for or a clear
error, and the play rule (streaming/plays.py) sees the truth:

- Range: a single byte range is passed on. If the origin ignores it (200,
  the whole body) and says its length, the part is cut here and answered
  206 with the right Content-Range, so seeking works and a seek is never a
  play; without a length, a range within the first MIN_PLAY_BYTES (a
  player's probe) is still cut here (`Content-Range: bytes 0-1/*`), and
  anything else gets the origin's 200 (no seeking on such origins).
- An encoded body (any Content-Encoding but identity, although identity
  was asked for) is refused with 502: decoding would break the byte ranges
  and Content-Length, and a listener must never receive a coding it did
  not ask for. Audio is compressed already; an origin gzipping it is
  misconfigured.
- An empty body is refused with 502 before anything is sent: nothing was
  played. So is a body whose first bytes do not come within
  UPSTREAM_HEADERS_TIMEOUT (504): see `first_bytes`.
- A 206 is passed on only when it answers what was asked, and its headers
  agree with each other (`checked_part`): the range sent (or, when the
  whole body was asked for, all of it, then answered as a 200), and a
  Content-Length equal to its Content-Range's span. Anything else is a
  502 before anything is sent: a listener's headers and bytes must never
  disagree, and the play rule reads those headers.
- Content-Type is always audio (streaming/headers.py), with the stream
  headers every source carries.

A problem can be answered only before the first byte: after it, a failing
origin or an endless trickle cuts the connection, which tells the listener
the body is short.

With the cache of remote clips on (CACHE_MAX_BYTES, streaming/cache.py),
`send_cached` first decides whether the cache answers: the origin is then
asked for the whole body once per clip, its answer judged by the same
rules (`Part.of(..., whole=True)`), and listeners are answered from the
cache's file like stored clips (streaming/stored.py's StoredFile), with
the origin's validators. What the cache does not take is piped as above.

A clip stored in a bucket (streaming/bucket.py) streams here too, from a
presigned URL of its object: a trusted `Origin` (the operator's endpoint:
no address guard), whose error answers are the media store's
(storage.StorageError, counted in clips_storage_errors_total) and whose
missing object is a 404, as a missing file is.
"""

import asyncio
import logging
import os
import re
import time
from collections.abc import AsyncIterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC
from email.utils import format_datetime

import aiohttp
import yarl
from aiohttp import web

from db.clips import Row
from metrics.registry import METRICS
from settings import SETTINGS, Settings
from storage import StorageError
from storage.s3 import ERROR_BODY_BYTES, error_code, explain
from streaming.cache import CACHE, Cache, Entry, Fill, new_entry, send_entry, send_filling
from streaming.headers import STREAM_HEADERS, audio_type
from streaming.plays import (
    MIN_PLAY_BYTES,
    STREAM_RANGE,
    STREAM_SOURCE,
    Outcome,
    asks_for_play,
    longest_life,
    record_play,
    tracked,
)
from streaming.ranges import (
    ByteRange,
    content_range,
    if_range_holds,
    modified_since,
    not_modified,
)
from streaming.upstream import UPSTREAM, UpstreamBusy, UpstreamRefused
from web.conditions import entity_tags, field_value
from web.problems import Problem

log = logging.getLogger(__name__)

VALIDATORS = ("ETag", "Last-Modified")
# Seconds a listener refused for want of an origin connection should wait:
# streams end, and stalled listeners are dropped, all the time.
BUSY_RETRY_AFTER = 5


def revalidates(request: web.Request) -> bool:
    """A conditional GET: a cache asking whether its copy is still current."""
    return bool(entity_tags(request, "If-None-Match")) or modified_since(request) is not None


def conditions(request: web.Request) -> dict[str, str]:
    """The conditional headers passed to the origin, each as one line (the
    client's lines combined), read as `not_modified` reads them: only an
    If-None-Match that lists entity tags, and If-Modified-Since only when
    it is one valid date and there is no If-None-Match (RFC 9110
    §13.1.3: a recipient ignores it then). A malformed one is ignored
    here, as there, rather than sent on: an origin or a bucket may refuse
    the request for it (moto answers 500), which the listener would read
    as the origin failing; a valid date goes in HTTP's own form, since
    origins choke on forms this app reads (an S3 store on RFC 5322's
    `-0000` zone). If-Range is decided here (send_remote)."""
    forwarded = {}
    if (tags := entity_tags(request, "If-None-Match")) is not None:
        if tags:
            forwarded["If-None-Match"] = field_value(request, "If-None-Match")
    elif (since := modified_since(request)) is not None:
        forwarded["If-Modified-Since"] = format_datetime(since.astimezone(UTC), usegmt=True)
    return forwarded


def range_to_ask(request: web.Request) -> ByteRange | None:
    """The range asked of the origin: the listener's, except that with
    If-Range, or for `bytes=-0`, the whole body is asked for (send_remote)."""
    wanted = request[STREAM_RANGE]
    if wanted is None or "If-Range" in request.headers or wanted.suffix == 0:
        return None
    return wanted


def is_probe(wanted: ByteRange | None) -> bool:
    """A player's probe: a short range from byte 0 (Safari's `bytes=0-1`)."""
    if wanted is None or not wanted.from_start or wanted.last is None:
        return False
    return wanted.last + 1 < MIN_PLAY_BYTES


async def redirect_remote(
    request: web.Request, clip: Row, origin: "Origin | None" = None
) -> web.StreamResponse:
    """STREAM_MODE=redirect: the bytes never pass through here, so the play
    is judged by the request alone, then the player goes to the origin.
    A probe is answered here from the origin (a few bytes): Safari and iOS
    send every request after a redirect to its target (whatwg/fetch#145),
    so redirecting the probe would take the real request, and its play,
    away from this URL. A conditional GET is a cache revalidating a copy
    it holds, and never a play here: the app cannot see whether the origin
    answers 304 or the clip (proxy mode sees it, and counts a 200)."""
    origin = origin or Origin(clip["audio_url"], clip["audio_url"])
    wanted = request[STREAM_RANGE]
    if request.method == "GET" and is_probe(wanted):
        return await send_remote(request, clip, origin)  # piped: the cache is for proxy mode
    if request.method == "GET" and asks_for_play(wanted) and not revalidates(request):
        record_play(request, clip["id"])
    raise web.HTTPFound(origin.url, headers={"Cache-Control": "no-store"})


@dataclass(frozen=True)
class Origin:
    """Where a remote clip's bytes come from. `url` is fetched; `identity`
    is what the cache (streaming/cache.py) keys on besides the clip id: the
    clip's audio_url for remote clips, "s3://bucket/key" for objects.
    `trusted`: an endpoint the operator configured (the bucket), not a
    URL a client chose."""

    url: str
    identity: str
    trusted: bool = False


MISSING = "The clip's audio file is missing"


async def send_remote(
    request: web.Request, clip: Row, origin: Origin | None = None
) -> web.StreamResponse:
    """The clip's audio from `origin` (None: its audio_url): from the cache
    when one is on (CACHE_MAX_BYTES) and it holds or can take the clip,
    else piped; either way the same statuses, headers and plays. Counted
    under the caller's STREAM_SOURCE, else "remote"."""
    origin = origin or Origin(clip["audio_url"], clip["audio_url"])
    if STREAM_SOURCE not in request:
        request[STREAM_SOURCE] = "remote"
    upstream = request.app[UPSTREAM]
    try:
        cache = request.app.get(CACHE)
        if cache is not None and request.app[SETTINGS].stream_mode == "proxy":
            cached = await send_cached(request, clip, origin, cache)
            if cached is not None:
                return cached
        headers = conditions(request)
        if (asked := range_to_ask(request)) is not None:
            headers["Range"] = asked.header()
        # `bytes=-0` is unsatisfiable whatever the size, but origins differ
        # on it: ask for the whole body and let the 416 be decided here.
        # With If-Range the whole body is asked for too, and the condition
        # decided here, against the validators the origin sends: origins
        # that honour Range do not all honour If-Range (aiohttp's static
        # files read only dates), and a range of a changed clip would be
        # spliced into the old.
        with upstream.slot():
            return await send_from_origin(request, clip, origin, headers)
    except UpstreamBusy as busy:
        request.app[METRICS].upstream_requests_of("busy").inc()
        raise Problem(
            503,
            f"The server is at its limit of audio origin connections ({busy}): try again shortly",
            headers={"Retry-After": str(BUSY_RETRY_AFTER)},
        ) from None
    except OriginFailed as failed:
        # One line per failure, for the operator: which clip, which host,
        # what happened (the listener's problem says the same words; the
        # guard logs what a refused name resolved to).
        log.warning(
            "clip %s: origin %s %s (%d)",
            clip["id"],
            yarl.URL(origin.url).host,
            failed.what,
            failed.status,
        )
        raise


async def send_from_origin(
    request: web.Request, clip: Row, origin: Origin, headers: dict[str, str]
) -> web.StreamResponse:
    """The body of send_remote, holding one origin connection slot."""
    answer = await open_origin(request, origin, headers)
    async with answer:
        return await send_answer(request, clip, answer, Part.of(request, answer, clip))


async def send_answer(
    request: web.Request,
    clip: Row,
    answer: aiohttp.ClientResponse,
    part: "Part",
    first: bytes | None = None,
) -> web.StreamResponse:
    """`part` of the origin's `answer` to the listener: its first bytes read
    before anything is sent (unless given: read already, for a fill the
    disk refused), then piped."""
    chunk_bytes = request.app[UPSTREAM].buffer_bytes
    if first is None:
        first = b""
        if request.method == "GET" and part.status != 304:
            first = await part.first_bytes(answer, chunk_bytes, request.app[SETTINGS])
    response = web.StreamResponse(status=part.status, headers=part.headers)
    if part.length is not None and part.status != 304:
        response.content_length = part.length
    with tracked(request) as outcome:
        await response.prepare(request)
        if request.method == "HEAD" or part.status == 304:
            return response
        life = longest_life(request.app[SETTINGS], clip)
        await pipe(request, response, part.body(first, answer, chunk_bytes), outcome, life)
        if outcome.reason != "complete" and request.transport is not None:
            # Headers are gone: closing the connection is the only way
            # left to tell the listener the body is cut short.
            if outcome.reason == "send_timeout":
                # Nothing it holds would ever reach it: drop it now.
                log.info("clip %s: listener accepted nothing in time, dropped", clip["id"])
                request.transport.abort()
            else:
                log.warning("clip %s: upstream %s mid-body", clip["id"], outcome.reason)
                request.transport.close()
    return response


# What the first listener's origin request decided, for listeners of the
# same clip who arrive while it is under way (Cache.pending).
REVALIDATED, STALE, PASS, ABANDONED = "revalidated", "stale", "pass", "abandoned"


async def send_cached(
    request: web.Request, clip: Row, origin: Origin, cache: Cache
) -> web.StreamResponse | None:
    """The stream served through the cache, or None when the cache does not
    take it (the caller pipes, as with the cache off):

    - a fresh entry: sent like a stored clip (`hit`); HEAD is answered
      only from a fresh entry, else by the origin's HEAD (`bypass`);
    - a fill under way: read from its file as the bytes land
      (`coalesced`), unless the range asked starts beyond what is written:
      that goes to the origin (`bypass`), so a seek never waits on a fill
      slower than the origin could answer it;
    - the first listener's origin request under way: its verdict decides;
    - else one origin request for the whole body (`fill_from_origin`),
      except for a range not from byte 0 (a seek: passed to the origin,
      which answers it at once) and for clips whose origin recently sent
      what may not be stored (`bypass`).
    """
    results = request.app[METRICS].cache_requests_of
    key = cache.key(clip["id"], origin.identity)
    entry = cache.lookup(key)
    if entry is not None and entry.fresh():
        if (sent := await send_entry(request, cache, entry, clip)) is not None:
            results("hit").inc()
            return sent
        entry = None
    if request.method != "GET":
        results("bypass").inc()
        return None
    if (pending := cache.pending.get(key)) is not None:
        try:
            verdict = await asyncio.shield(pending)
        except Abandoned:
            verdict = PASS
        if verdict in (REVALIDATED, STALE):
            return await send_kept(request, cache, cache.lookup(key), clip, verdict)
        if isinstance(verdict, Fill):
            return await join(request, clip, verdict)
        results("bypass").inc()
        return None
    if (fill := cache.fills.get(key)) is not None:
        return await join(request, clip, fill)
    wanted = request[STREAM_RANGE]
    if entry is None and ((wanted is not None and not wanted.from_start) or cache.refuses(key)):
        results("bypass").inc()
        return None
    return await fill_from_origin(request, clip, origin, cache, key, entry)


async def send_kept(
    request: web.Request, cache: Cache, entry: Entry | None, clip: Row, result: str
) -> web.StreamResponse | None:
    """An entry just revalidated, or stale and served while its origin fails."""
    sent = None if entry is None else await send_entry(request, cache, entry, clip)
    request.app[METRICS].cache_requests_of(result if sent is not None else "bypass").inc()
    return sent


async def join(request: web.Request, clip: Row, fill: Fill) -> web.StreamResponse | None:
    """A listener arriving during a fill: served from its file."""
    results = request.app[METRICS].cache_requests_of
    wanted = request[STREAM_RANGE]
    if wanted is not None and not fill.done:
        try:
            offset = wanted.resolve(fill.entry.size)[0]
        except Problem:
            offset = 0  # a 416, told from the fill's size as from the origin's
        if offset > fill.written:
            results("bypass").inc()
            return None
    sent = await send_filling(request, fill, clip)
    results("coalesced" if sent is not None else "bypass").inc()
    return sent


async def fill_from_origin(
    request: web.Request, clip: Row, origin: Origin, cache: Cache, key: str, entry: Entry | None
) -> web.StreamResponse | None:
    """The first listener of a clip the cache lacks or holds stale: one
    origin request for the whole body (conditional on the stale entry's
    validators). Its errors are the listener's, as when piping; an answer
    that may be stored becomes a fill the listener reads like any other
    (`miss`); one that may not is piped to this listener (`bypass`); a 304
    refreshes the entry (`revalidated`); an origin that fails leaves a stale
    entry served (`stale`, see streaming/cache.py). Listeners arriving
    meanwhile wait for the verdict."""
    results = request.app[METRICS].cache_requests_of
    verdict: asyncio.Future = asyncio.get_running_loop().create_future()
    verdict.add_done_callback(lambda f: f.cancelled() or f.exception())
    cache.pending[key] = verdict

    def decide(value: object) -> None:
        if not verdict.done():
            verdict.set_result(value)
        if cache.pending.get(key) is verdict:
            del cache.pending[key]
            cache.cancelled.discard(key)

    answer = None
    try:
        with ExitStack() as held:
            try:
                held.enter_context(request.app[UPSTREAM].slot())
                answer = await open_origin(request, origin, entry.conditions() if entry else {})
                held.callback(answer.release)
                if answer.status == 304 and entry is not None:
                    if cache.refresh(entry, answer.headers):
                        decide(REVALIDATED)
                    else:
                        cache.drop_key(key)
                        decide(PASS)
                elif answer.status == 206 and whole_size(answer) is None:
                    # A part when all was asked: an origin that caps its
                    # answers. What it sends the listener's own request
                    # is for the pipe to judge (a part may end early).
                    cache.refuse(key)
                    decide(PASS)
                else:
                    part = Part.of(request, answer, clip, whole=True)
                    size = whole_size(answer)
                    new = None
                    if size is not None and cache.room_for(size):
                        new = new_entry(clip["id"], origin.identity, key, size, answer.headers)
                    if new is None:
                        cache.refuse(key)
                        cache.drop_key(key)
                        decide(PASS)
                        results("bypass").inc()
                        return await send_answer(request, clip, answer, part)
                    settings = request.app[SETTINGS]
                    chunk_bytes = request.app[UPSTREAM].buffer_bytes
                    whole = Part(200, {}, length=size)
                    first = await whole.first_bytes(answer, chunk_bytes, settings)
                    if not cache.reserve(size):
                        # The fills in flight hold the bound: this one is
                        # piped, and the next listener may fill it.
                        decide(PASS)
                        results("bypass").inc()
                        return await send_answer(request, clip, answer, part, first)
                    try:
                        fill = Fill(cache, new, first)
                    except OSError as error:
                        cache.release(size)
                        log.warning("clip %s: cache cannot fill: %s", clip["id"], error)
                        decide(PASS)
                        results("bypass").inc()
                        return await send_answer(request, clip, answer, part, first)
                    life = longest_life(settings, clip)
                    cache.start(fill, answer, held.pop_all(), chunk_bytes, life)
                    decide(fill)
            except (OriginFailed, UpstreamBusy) as failed:
                gone = answer is not None and 400 <= answer.status < 500
                if verdict.done() or entry is None or entry.must_revalidate or gone:
                    if gone:
                        cache.drop_key(key)
                    raise  # piping already, or nothing that may be served instead
                log.warning(
                    "clip %s: origin %s %s: serving its cached copy",
                    clip["id"],
                    yarl.URL(origin.url).host,
                    getattr(failed, "what", failed),
                )
                decide(STALE)
    except BaseException as error:
        if not verdict.done():
            verdict.set_exception(error if isinstance(error, Exception) else Abandoned())
        raise
    finally:
        decide(PASS)  # a no-op once decided
    if verdict.result() in (REVALIDATED, STALE):
        return await send_kept(request, cache, entry, clip, verdict.result())
    if verdict.result() == PASS:
        results("bypass").inc()
        return None
    sent = await send_filling(request, verdict.result(), clip)
    results("miss" if sent is not None else "bypass").inc()
    return sent


class Abandoned(Exception):
    """The first listener left before its origin answered: others pipe."""


def whole_size(answer: aiohttp.ClientResponse) -> int | None:
    """The body's size when the answer is all of it (a 200 with a length,
    or a 206 Part.of found to cover all of it); else None."""
    if answer.status == 200:
        return answer.content_length
    if answer.status == 206:
        sent = content_range(answer.headers.get("Content-Range"))
        if sent is None or sent[0] != 0 or sent[2] is None or sent[1] != sent[2] - 1:
            return None
        length = answer.content_length
        return sent[2] if length in (None, sent[2]) else None
    return None


class OriginFailed(Problem):
    """A 502 or 504 the clip's origin caused; `what` says what happened, in
    words (never an address), for the listener and the log alike."""

    def __init__(self, status: int, what: str):
        super().__init__(status, f"The clip's audio origin {what}")
        self.what = what


def failure(error: BaseException) -> str:
    """What went wrong with an origin, in words a listener and an operator
    both read, never an address: aiohttp's own messages name the address
    connected to, which may be internal (the guard's messages never do)."""
    if isinstance(error, aiohttp.ConnectionTimeoutError):
        return "timed out: no connection within UPSTREAM_CONNECT_TIMEOUT"
    if isinstance(error, TimeoutError):
        return "timed out: no answer within UPSTREAM_HEADERS_TIMEOUT"
    if isinstance(error, aiohttp.ClientConnectorDNSError):
        return "could not be reached: its host name was not found"
    if isinstance(error, aiohttp.ClientConnectorCertificateError):
        return "failed TLS: its certificate could not be verified"
    if isinstance(error, aiohttp.ClientSSLError):
        return "failed TLS: the secure connection could not be set up"
    if isinstance(error, aiohttp.ClientConnectorError):
        if isinstance(error.os_error, ConnectionRefusedError):
            return "could not be reached: connection refused"
        # The errno's words: asyncio's own message quotes the address.
        number = error.os_error.errno
        return f"could not be reached: {os.strerror(number).lower() if number else 'no connection'}"
    if isinstance(error, aiohttp.ServerDisconnectedError):
        return "closed the connection without answering"
    if isinstance(error, aiohttp.ClientResponseError):
        return "sent an answer that is not valid HTTP"
    if isinstance(error, aiohttp.ClientPayloadError):
        return "sent a broken body"
    if isinstance(error, aiohttp.ClientOSError):
        return "dropped the connection"
    return f"failed ({type(error).__name__})"


async def open_origin(
    request: web.Request, origin: Origin, headers: dict[str, str]
) -> aiohttp.ClientResponse:
    """The origin's response, headers in, or a problem naming what failed.
    A trusted origin's failures are the media store's (`store_failed`):
    unreachable, a 503 StorageError; an error answer, see there."""
    upstream = request.app[UPSTREAM]
    metrics = request.app[METRICS]
    started = time.perf_counter()
    try:
        answer = await upstream.open(request.method, origin.url, headers, trusted=origin.trusted)
    except UpstreamRefused as refused:
        metrics.upstream_requests_of("refused").inc()
        raise OriginFailed(502, f"is refused: {refused}") from None
    except (TimeoutError, aiohttp.ClientError) as error:
        timeout = isinstance(error, TimeoutError)
        metrics.upstream_requests_of("timeout" if timeout else "connect_error").inc()
        if origin.trusted:
            metrics.storage_errors.labels("read").inc()
            raise StorageError(
                "read the clip from the bucket", f"the endpoint {failure(error)}", unavailable=True
            ) from None
        raise OriginFailed(504 if timeout else 502, failure(error)) from None
    metrics.upstream_ttfb.observe(time.perf_counter() - started)
    metrics.upstream_requests_of(
        f"{answer.status // 100}xx" if answer.status >= 400 else "ok"
    ).inc()
    if origin.trusted and answer.status >= 400:
        async with answer:
            await store_failed(request, answer)
    return answer


async def store_failed(request: web.Request, answer: aiohttp.ClientResponse) -> None:
    """A bucket's error answer: a missing object is a 404 (as a missing
    file is); an unsatisfiable range a 416 with the size S3 names in its
    body; anything else (no such bucket, access denied, ...) the media
    store's failure, counted as a "read" storage error."""
    try:
        body = await answer.content.read(ERROR_BODY_BYTES) if request.method != "HEAD" else b""
    except aiohttp.ClientError:
        body = b""
    code = error_code(body)
    if code == "NoSuchKey" or (answer.status == 404 and code is None):
        raise Problem(404, MISSING)
    if answer.status == 416:
        found = re.search(rb"<ActualObjectSize>(\d+)</ActualObjectSize>", body)
        size = found.group(1).decode() if found else "*"
        raise Problem(
            416,
            f"Range {request.headers.get('Range', '')[:100]!r} is outside the audio",
            headers={"Content-Range": answer.headers.get("Content-Range", f"bytes */{size}")},
        )
    request.app[METRICS].storage_errors.labels("read").inc()
    raise StorageError(
        "read the clip's audio from the bucket",
        explain(answer.status, body),
        unavailable=answer.status == 503,
    )


@dataclass
class Part:
    """What the listener gets from an origin's answer: status, headers, and
    which bytes of the origin's body (`skip` them, then at most `limit`)."""

    status: int
    headers: dict[str, str]
    length: int | None = None
    skip: int = 0
    limit: int | None = None

    @classmethod
    def of(
        cls, request: web.Request, origin: aiohttp.ClientResponse, clip: Row, whole: bool = False
    ) -> "Part":
        """Raises a problem for an answer that cannot be passed on. `whole`:
        the origin was asked for the whole body, without conditions (a
        cache fill), whatever the listener asked."""
        asked = None if whole else range_to_ask(request)
        if origin.status == 416 and asked is not None:
            raise Problem(
                416,
                f"Range {request.headers.get('Range', '')[:100]!r} is outside the audio",
                headers={k: v for k, v in origin.headers.items() if k == "Content-Range"},
            )
        if origin.status not in (200, 206, 304):
            raise OriginFailed(502, f"answered {origin.status}")
        status, length = origin.status, origin.content_length
        coding = origin.headers.get("Content-Encoding", "identity").strip().lower()
        if coding not in ("", "identity"):
            raise OriginFailed(502, f"sent an encoded body ({coding[:40]})")
        headers = {
            **STREAM_HEADERS,
            "Content-Type": audio_type(origin.headers.get("Content-Type"), clip["content_type"]),
            **{k: origin.headers[k] for k in VALIDATORS if k in origin.headers},
        }
        if length == 0 and status != 304:
            raise OriginFailed(502, "sent an empty body")
        if status == 206:
            sent = checked_part(asked, origin.headers.get("Content-Range"), length)
            if asked is None:
                status, length = 200, sent[2]  # all of it, as checked_part proved
        etag, modified = origin.headers.get("ETag"), origin.headers.get("Last-Modified")
        if status == 304 or (status == 200 and etag and not_modified(request, etag, modified)):
            # The origin's 304, or one it should have sent: it ignored the
            # conditional request, and the listener's copy is current.
            return cls(304, headers)
        if status == 206:
            headers["Content-Range"] = origin.headers["Content-Range"]
            headers["Accept-Ranges"] = "bytes"
            count = sent[1] - sent[0] + 1
            return cls(206, headers, length=count, limit=count)
        # 200: the whole body, whatever was asked. Cut the range here when
        # it can be done right.
        headers["Accept-Ranges"] = "bytes" if length is not None else "none"
        wanted = request[STREAM_RANGE]
        if wanted is None or not if_range_holds(request, etag, modified):
            return cls(200, headers, length=length, limit=length)
        if length is not None:
            offset, count = wanted.resolve(length)
            headers["Content-Range"] = f"bytes {offset}-{offset + count - 1}/{length}"
            return cls(206, headers, length=count, skip=offset, limit=count)
        if is_probe(wanted):
            # Unknown length: cut a probe's few bytes; the answer's length is
            # whatever the origin has of them.
            return cls(206, headers, skip=0, limit=wanted.last + 1)
        return cls(200, headers)

    async def first_bytes(
        self, origin: aiohttp.ClientResponse, chunk_bytes: int, settings: Settings
    ) -> bytes:
        """The body's first bytes, read before anything is sent: an empty
        body is a 502, not a play. For a part of unknown length (a probe
        cut here), all of it, so that its Content-Range can be told.

        All within UPSTREAM_HEADERS_TIMEOUT, then 504: until they are in,
        the listener has no headers, so to it the origin has not answered
        yet, and a player waiting for a response is owed the same bound as
        for the origin's headers. The stream's longest life (minutes) is
        for a listener already receiving audio, and the per-read timeout
        never trips on a trickle. A probe is under 64 KiB: an origin that
        cannot send that in 10 s could not keep up with a 64 kbit/s stream.
        """
        try:
            async with asyncio.timeout(settings.upstream_headers_timeout):
                return await self._first_bytes(origin, chunk_bytes)
        except TimeoutError:  # aiohttp's read timeout is one too
            raise OriginFailed(504, "timed out: no audio within UPSTREAM_HEADERS_TIMEOUT") from None
        except aiohttp.ClientError as error:
            raise OriginFailed(502, f"{failure(error)} before its audio") from None

    async def _first_bytes(self, origin: aiohttp.ClientResponse, chunk_bytes: int) -> bytes:
        if self.length is not None or self.status == 200:
            first = await origin.content.read(chunk_bytes)
        else:
            first = bytearray()
            while len(first) < self.limit and (more := await origin.content.read(chunk_bytes)):
                first += more
            first = bytes(first[: self.limit])
            self.length = self.limit = len(first)
            self.headers["Content-Range"] = f"bytes 0-{len(first) - 1}/*"
        if not first:
            raise OriginFailed(502, "sent an empty body")
        return first

    async def body(
        self, first: bytes, origin: aiohttp.ClientResponse, chunk_bytes: int
    ) -> AsyncIterator[bytes]:
        """The listener's bytes: `first` (already read) and the rest of the
        origin's body, cut to this part."""
        skip, limit = self.skip, self.limit
        chunk = first
        while chunk and limit != 0:
            if skip:
                dropped = min(skip, len(chunk))
                chunk, skip = chunk[dropped:], skip - dropped
            if limit is not None:
                chunk = chunk[:limit]
                limit -= len(chunk)
            if chunk:
                yield chunk
            if limit != 0:
                chunk = await origin.content.read(chunk_bytes)
        if limit:
            raise aiohttp.ClientPayloadError(f"the origin's body ended {limit} bytes short")


def checked_part(
    asked: ByteRange | None, value: str | None, length: int | None
) -> tuple[int, int, int | None]:
    """(first, last, size) of an origin's 206, when it answers `asked`
    (None: the whole body was asked for) and its Content-Length agrees;
    else a 502. A part may end before the range asked for does (an origin
    may cap a range; players ask on from where it ended), but must start
    where asked; a suffix must be the last min(N, size) bytes; a part for
    a request of the whole body must be all of it."""
    sent = content_range(value)
    if sent is None:
        raise OriginFailed(502, "sent a part without a valid range")
    first, last, size = sent
    if length is not None and length != last - first + 1:
        raise OriginFailed(
            502,
            f"sent a part of {last - first + 1} bytes "
            f"(bytes {first}-{last}) with a Content-Length of {length}",
        )
    if asked is None:
        answers = first == 0 and size is not None and last == size - 1
    elif asked.first is None:
        answers = (
            size is not None and last == size - 1 and last + 1 - first == min(asked.suffix, size)
        )
    else:
        answers = first == asked.first and (asked.last is None or last <= asked.last)
    if not answers:
        what = "all of it" if asked is None else asked.header()
        raise OriginFailed(502, f"sent bytes {first}-{last} when asked for {what}")
    return sent


async def pipe(
    request: web.Request,
    response: web.StreamResponse,
    chunks: AsyncIterator[bytes],
    outcome: Outcome,
    life: float,
) -> None:
    """Write `chunks` and the end of the body to the listener; sets
    `outcome.reason` when the origin fails, the stream outlives `life`
    (`timeout`), or the listener accepts a write no sooner than
    STREAM_SEND_TIMEOUT (`send_timeout`)."""
    send_timeout = request.app[SETTINGS].stream_send_timeout
    sending = None
    try:
        # A trickling or endless origin, or a listener reading just enough
        # to pass the send deadline, must not hold a stream for long.
        async with asyncio.timeout(life):
            async for chunk in chunks:
                # A listener who stops reading would hold the origin
                # connection (and this chunk) until `life` ends.
                async with asyncio.timeout(send_timeout) as sending:
                    await response.write(chunk)
                outcome.sent += len(chunk)
            async with asyncio.timeout(send_timeout) as sending:
                await response.write_eof()  # waits for the last bytes to drain
    except TimeoutError:
        outcome.reason = "send_timeout" if sending is not None and sending.expired() else "timeout"
    except aiohttp.ClientError as error:
        if isinstance(error, ConnectionResetError):
            raise  # writing to the listener failed: they left
        outcome.reason = "upstream_error"
