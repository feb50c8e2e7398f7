"""CORS for browser front ends on other origins (CORS_ORIGINS).

Preflights are answered here, before authentication (browsers send them
without credentials). Actual responses get their headers in
on_response_prepare, the one place that also reaches streams, whose headers
are sent before the handler returns.
"""

from aiohttp import web

from settings import SETTINGS
from web.problems import Problem

ALLOW_METHODS = "GET, HEAD, POST, PATCH, DELETE"
ALLOW_HEADERS = (
    "Authorization, X-API-Key, Content-Type, Range, If-Match, If-None-Match, X-Request-ID"
)
EXPOSE_HEADERS = "Link, Location, ETag, Content-Range, Accept-Ranges, Content-Length, X-Request-ID"
MAX_AGE = "600"


def _allowed(request: web.Request) -> str | None:
    origin = request.headers.get("Origin")
    return origin if origin is not None and origin in request.app[SETTINGS].cors_origins else None


def preflight(request: web.Request) -> web.Response | None:
    """The answer to a CORS preflight (raises a 403 for an origin not
    allowed), or None for any other request."""
    if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
        return None
    origin = _allowed(request)
    if origin is None:
        raise Problem(403, "This origin may not call the API (CORS_ORIGINS)")
    return web.Response(
        status=204,
        headers={
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Methods": ALLOW_METHODS,
            "Access-Control-Allow-Headers": ALLOW_HEADERS,
            "Access-Control-Max-Age": MAX_AGE,
            "Vary": "Origin",
        },
    )


def add_headers(request: web.Request, response: web.StreamResponse) -> None:
    """When the response is prepared: allow an allowed origin to read it."""
    if not request.app[SETTINGS].cors_origins:
        return
    origin = _allowed(request)
    if origin is not None and "Access-Control-Allow-Origin" not in response.headers:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
        response.headers.add("Vary", "Origin")
