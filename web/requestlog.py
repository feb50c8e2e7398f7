"""Request ids and the access log: one structured line per request.

A request id comes from the client's X-Request-ID (when it looks like an
id) or is generated; it is returned in X-Request-ID, carried in problem
bodies and printed in the access log, so one id ties a user's report to a
log line.
"""

import json
import logging
import re
import uuid

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from schemas.fields import positive_bigint

REQUEST_ID = web.RequestKey("REQUEST_ID", str)
# Body bytes a stream sent: aiohttp's own count misses what sendfile sent.
BODY_BYTES = web.RequestKey("BODY_BYTES", int)
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


@web.middleware
async def middleware(request: web.Request, handler) -> web.StreamResponse:
    given = request.headers.get("X-Request-ID", "")
    request[REQUEST_ID] = given if _VALID_ID.fullmatch(given) else uuid.uuid4().hex
    return await handler(request)


async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every response, streams included, carries the id."""
    if REQUEST_ID in request:
        response.headers["X-Request-ID"] = request[REQUEST_ID]


class AccessLogger(AbstractAccessLogger):
    """Fields: method, route (template, not path), status, duration_ms,
    bytes, clip_id, request_id. LOG_FORMAT=json renders them as JSON."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        match_info = match_info_of(request)
        clip_id = match_info.get("clip_id") if match_info is not None else None
        fields = {
            "method": request.method,
            "route": route_of(request),
            "status": response.status,
            "duration_ms": round(time * 1000, 2),
            "bytes": request.get(BODY_BYTES, response.body_length),
            "clip_id": positive_bigint(clip_id) if clip_id else None,
            "request_id": request.get(REQUEST_ID),
        }
        self.logger.info(
            "%(method)s %(route)s %(status)s %(duration_ms).2fms %(bytes)sB clip=%(clip_id)s"
            " id=%(request_id)s",
            fields,
            extra={"fields": fields},
        )


class JsonFormatter(logging.Formatter):
    """One JSON object per line; access-log lines carry their fields flat."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if fields is not None:
            line.update(fields)
        else:
            line["message"] = record.getMessage()
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)
