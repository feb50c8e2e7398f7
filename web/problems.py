"""One error type, rendered once as RFC 9457 `application/problem+json`
(its body's shape: schemas/problems.py, which /openapi.json documents).

A request body aiohttp cannot decode (not in the `Content-Encoding` it
declares, say) is a 400 naming the body, whichever handler was reading it:
answered here, so that no reader has to know how aiohttp reports it.

`answer` also names what failed when the client did nothing wrong:
the database (503 while unavailable, `clips_db_errors_total`), the media
store (500, or 507 when the disk is full), anything else (500, logged with
its traceback).
"""

import logging
from http import HTTPStatus

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from db import DatabaseError, DatabaseUnavailable
from metrics.registry import METRICS
from schemas import problems as shapes
from storage import StorageError
from web.requestlog import REQUEST_ID
from web.responses import json_response

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/problem+json"


def carried(text: str) -> str:
    """Text as JSON can carry it: a problem may quote what a client or an
    origin sent, and bytes that were not UTF-8 arrive as lone surrogates,
    which no encoder takes. They are written as escapes instead."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class Problem(Exception):
    """An error a client sees: a status, what was wrong, and optionally the
    fields that were wrong (`errors`) and response headers."""

    def __init__(
        self,
        status: int,
        detail: str | None = None,
        *,
        errors: list[shapes.FieldError] | None = None,
        headers: dict[str, str] | None = None,
    ):
        detail = carried(detail) if detail else detail
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = [
            {key: carried(value) for key, value in error.items()}  # type: ignore[misc]
            for error in errors or ()
        ] or None
        self.headers = headers or {}

    def response(self, request_id: str | None = None) -> web.Response:
        body: shapes.Problem = {
            "type": "about:blank",
            "title": HTTPStatus(self.status).phrase,
            "status": self.status,
        }
        if self.detail:
            body["detail"] = self.detail
        if self.errors:
            body["errors"] = self.errors
        if request_id:
            body["request_id"] = request_id
        return json_response(
            body, status=self.status, headers=self.headers, content_type=CONTENT_TYPE
        )


def _from_http_error(request: web.Request, error: web.HTTPException) -> Problem:
    headers = {k: v for k, v in error.headers.items() if k in ("Allow", "Retry-After")}
    if error.status == 404:
        detail = f"Nothing is served at {request.path}"
    elif error.status == 405:
        detail = f"{request.method} is not allowed here; use {headers.get('Allow', '')}"
    elif error.status == 413:
        detail = "The request body is too large"
    else:
        detail = error.text if error.text and not error.text.startswith(str(error.status)) else None
    return Problem(error.status, detail, headers=headers)


def _body_unreadable(request: web.Request, error: Exception) -> bool:
    """Whether `error` is aiohttp failing to decode this request's body.
    RequestPayloadError is only ever that; its pure-Python parser also hands
    readers the bare HttpProcessingError (a bad chunk size) it then sets on
    the body, while the same class from an origin's answer must stay a
    fault of ours."""
    if isinstance(error, RequestPayloadError):
        return True
    return isinstance(error, HttpProcessingError) and request.content.exception() is not None


def _unreadable_body(request: web.Request, error: Exception) -> Problem:
    """The 400 for a body aiohttp cannot decode. Its parser ignores the rest
    of the connection's bytes from then on, so the connection closes after
    the answer; the body is marked ended first, or aiohttp, draining it
    before closing, would meet the same error again and log it as a fault
    of its own."""
    cause = error.__cause__ if isinstance(error, RequestPayloadError) else error
    reason = cause.message if isinstance(cause, HttpProcessingError) else str(error)
    request.content.feed_eof()
    return Problem(400, f"The request body cannot be read: {reason}")


def answer(request: web.Request, error: Exception) -> web.StreamResponse:
    """The response to an exception a handler (or a check before it) raised:
    a Problem as itself, anything else as what failed. Raises `error` again
    when it is no error at all (a redirect) for aiohttp to send.
    web/chain.py calls it around every handler."""
    request_id = request.get(REQUEST_ID)
    if isinstance(error, Problem):
        return error.response(request_id)
    if isinstance(error, web.HTTPException):
        if error.status < 400:
            raise error
        return _from_http_error(request, error).response(request_id)
    if isinstance(error, ConnectionResetError):
        # The client left (an aborted upload, say): nothing went wrong here and
        # nobody is left to read an answer; 499 tells the logs and metrics.
        return web.Response(status=499)
    if isinstance(error, DatabaseUnavailable):
        log.warning("database unavailable: %s %s: %s", request.method, request.path, error)
        request.app[METRICS].db_errors.labels(error.kind).inc()
        return Problem(
            503, "The database is unavailable; try again shortly", headers={"Retry-After": "2"}
        ).response(request_id)
    if isinstance(error, DatabaseError):
        log.error("database error: %s %s", request.method, request.path, exc_info=error)
        request.app[METRICS].db_errors.labels(error.kind).inc()
        return Problem(500, "Internal error").response(request_id)
    if isinstance(error, StorageError):
        # Counted by the store itself (storage.MediaStore).
        log.error("storage failed: %s %s: %s", request.method, request.path, error)
        if error.full:
            return Problem(507, "The media store is full; try again later").response(request_id)
        if error.unavailable:
            return Problem(
                503, f"The media store is unavailable: {error}", headers={"Retry-After": "5"}
            ).response(request_id)
        return Problem(500, f"The media store failed: {error}").response(request_id)
    if _body_unreadable(request, error):
        response = _unreadable_body(request, error).response(request_id)
        response.force_close()
        return response
    log.error("unhandled error: %s %s", request.method, request.path, exc_info=error)
    return Problem(500, "Internal error").response(request_id)
