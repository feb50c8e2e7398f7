"""Request ids and the access log: one structured line per request.

A request id comes from the client's X-Request-ID (when it looks like an
id) or is generated; it is returned in X-Request-ID, carried in problem
bodies and printed in the access log, so one id ties a user's report to a
log line.
"""

import json
import logging
import random
import re
from datetime import UTC, datetime

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError

from schemas.fields import positive_bigint
from settings import SETTINGS

REQUEST_ID = web.RequestKey("REQUEST_ID", str)
# Body bytes a stream sent: aiohttp's own count misses what sendfile sent.
BODY_BYTES = web.RequestKey("BODY_BYTES", int)
# The clip a request made (POST /clips), for its access-log line; a clip
# named in the path is read from the route.
CLIP_ID = web.RequestKey("CLIP_ID", int)
_VALID_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def match_info_of(request: web.BaseRequest) -> web.UrlMappingMatchInfo | None:
    """The router's match, or None for a request aiohttp rejected before
    routing (a malformed request line or header)."""
    try:
        return request.match_info  # type: ignore[attr-defined]
    except (AttributeError, AssertionError):
        return None


def route_of(request: web.BaseRequest) -> str:
    """The route template that matched, never the raw path."""
    match_info = match_info_of(request)
    resource = match_info.route.resource if match_info is not None else None
    return resource.canonical if resource is not None else "unmatched"


class RequestIds:
    """Ids for requests that bring none: 128 random bits as 32 hex digits,
    as uuid4().hex gave, from a generator seeded once from the system's
    randomness. An id only has to be unique, not secret, and uuid4 asks the
    kernel for fresh bytes on every request (measured: 10 µs, against
    under 1 µs here). One per app, each seeded apart, so workers differ."""

    def __init__(self) -> None:
        self._random = random.Random()

    def new(self) -> str:
        return f"{self._random.getrandbits(128):032x}"


REQUEST_IDS = web.AppKey("REQUEST_IDS", RequestIds)


def assign_id(request: web.Request) -> str:
    """The request's id: the client's X-Request-ID when it looks like one,
    else a new one; kept in REQUEST_ID (web/chain.py calls this first)."""
    given = request.headers.get("X-Request-ID")
    if given and _VALID_ID.fullmatch(given):
        request[REQUEST_ID] = given
    else:
        request[REQUEST_ID] = given = request.app[REQUEST_IDS].new()
    return given


# Routes polled by orchestrators and Prometheus every few seconds: their
# successful answers are left out of the access log with
# ACCESS_LOG_PROBES=false (handlers/health.py and handlers/metrics.py serve
# them). A failed one is always logged: a 401 on /metrics may be someone
# guessing the token, a 503 on /readyz is news.
PROBE_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})


def body_bytes(request: web.BaseRequest, response: web.StreamResponse) -> int:
    """The response body's bytes, headers never counted. A stream counts
    what it sent (less than its Content-Length when cut short, and what
    sendfile sent, which aiohttp's own count misses); any other response
    its body as sent, nothing for HEAD, 204 and 304."""
    if BODY_BYTES in request:
        return request[BODY_BYTES]
    if request.method == "HEAD" or response.status in (204, 304) or response.status < 200:
        return 0
    if response.content_length is not None:
        return response.content_length
    return 0 if getattr(response, "body", None) is None else len(response.body)


class AccessLogger(AbstractAccessLogger):
    """Fields: method, route (template, not path), status, duration_ms,
    bytes (body bytes sent, see body_bytes), clip_id (the clip the request
    named, or the one a POST created), request_id; a field without a value
    is left out. LOG_FORMAT=json renders them as JSON."""

    @property
    def enabled(self) -> bool:
        # aiohttp asks once per connection: below INFO (LOG_LEVEL=WARNING)
        # no line is built, rather than built and then dropped.
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        match_info = match_info_of(request)
        route = route_of(request)
        if (
            route in PROBE_ROUTES
            and response.status < 400
            and not match_info.current_app[SETTINGS].access_log_probes
        ):
            return
        named = match_info.get("clip_id") if match_info is not None else None
        clip_id = request.get(CLIP_ID) or (positive_bigint(named) if named else None)
        fields = {
            "method": request.method,
            "route": route,
            "status": response.status,
            "duration_ms": round(time * 1000, 2),
            "bytes": body_bytes(request, response),
            "clip_id": clip_id,
            "request_id": request.get(REQUEST_ID),
        }
        fields = {name: value for name, value in fields.items() if value is not None}
        message = "%(method)s %(route)s %(status)s %(duration_ms).2fms %(bytes)sB"
        if "clip_id" in fields:
            message += " clip=%(clip_id)s"
        if "request_id" in fields:
            message += " id=%(request_id)s"
        self.logger.info(message, fields, extra={"fields": fields})


# What must never reach a log line raw: C0 and C1 controls (CR and LF end a
# line; ESC starts terminal sequences), DEL, the Unicode line and paragraph
# separators some viewers break lines on, and lone surrogates (header bytes
# that were not UTF-8, as aiohttp decodes them).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
# Every line of a traceback or stack after a record's first line starts with
# this, so no text in it (an exception message quoting a request) can begin
# a line that reads as a record of its own.
CONTINUATION = "  | "


def escape_controls(text: str) -> str:
    """`text` on one line: each unprintable character as its Python escape
    (a newline as `\\n`, ESC as `\\x1b`, a stray byte 0xFF as `\\udcff`)."""
    return _UNPRINTABLE.sub(lambda found: ascii(found[0])[1:-1], text)


def continuation(text: str) -> str:
    """A multi-line text (a traceback) as continuation lines, each escaped."""
    return "\n".join(CONTINUATION + escape_controls(line) for line in text.split("\n"))


def utc_time(record: logging.LogRecord) -> str:
    """When the record was made: UTC, ISO 8601 to the millisecond, with its
    zone (`2026-11-30T12:00:00.123Z`), in every format, so lines from
    hosts in different zones sort and compare as written."""
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _trailer(formatter: logging.Formatter, record: logging.LogRecord) -> list[str]:
    """The record's traceback and stack, each a block of continuation lines."""
    blocks = []
    if record.exc_info:
        blocks.append(formatter.formatException(record.exc_info))
    elif record.exc_text:
        blocks.append(record.exc_text)
    if record.stack_info:
        blocks.append(formatter.formatStack(record.stack_info))
    return [continuation(block.rstrip("\n")) for block in blocks]


class PlainFormatter(logging.Formatter):
    """`time level logger: message`, one line per record whatever the
    message holds (LOG_FORMAT=plain); a traceback follows on continuation
    lines. Clients choose much of what is logged (paths, header values), so
    nothing they send can start a line that looks like a record."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.getMessage())
        record.asctime = utc_time(record)
        return "\n".join([self.formatMessage(record), *_trailer(self, record)])


class JsonFormatter(logging.Formatter):
    """One JSON object per line (LOG_FORMAT=json); access-log lines carry
    their fields flat. json.dumps escapes every control character (and, with
    ensure_ascii, every non-ASCII one), so a record is one line; text values
    are escaped as in the plain format too, so a viewer that shows a
    decoded value shows it on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": utc_time(record),
            "level": record.levelname,
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if fields is not None:
            line.update(
                (name, escape_controls(value) if isinstance(value, str) else value)
                for name, value in fields.items()
            )
        else:
            line["message"] = escape_controls(record.getMessage())
        trailer = _trailer(self, record)
        if trailer:
            line["exception"] = "\n".join(trailer)
        return json.dumps(line, ensure_ascii=True, default=str)


def formatter(log_format: str) -> logging.Formatter:
    """The formatter for LOG_FORMAT, given to the one handler every logger
    writes through (server.configure_logging)."""
    return JsonFormatter() if log_format == "json" else PlainFormatter()


class ParserRefusals(logging.Filter):
    """aiohttp's parser refuses a malformed request (a bad request line or
    header) with a plain 400 before any handler runs, and logs it as an
    ERROR with a traceback: anyone could flood the error log and its alerts
    with garbage. Such a record becomes one INFO line naming the refusal;
    the access log has its line too. Anything else passes unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError) and error.code == 400:
            first = str(error.message).strip().partition("\n")[0]
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = "refused a malformed request: %s", (first,)
            record.exc_info = record.exc_text = None
        return True
