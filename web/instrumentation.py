"""Request metrics: every request counted and timed by route template and status.

Label values are route templates, never raw paths (web/requestlog.py's
route_of), and methods from a fixed set, so no input grows the number of
series. Streams are timed in
their own histogram: their life is the listener's, not the server's speed.
"""

import asyncio
import time

from aiohttp import web

from metrics.registry import METRICS
from web.auth import STREAM_ROUTE
from web.requestlog import route_of

# The `method` label's values. The C parser accepts some 35 method tokens
# (PROPFIND, MKCOL, ...) and the pure-Python one (AIOHTTP_NO_EXTENSIONS=1)
# any token at all: each would be a series of its own, so the rest are
# counted as "other".
METHODS = frozenset({"GET", "HEAD", "POST", "PATCH", "DELETE", "OPTIONS", "PUT"})


def method_label(method: str) -> str:
    return method if method in METHODS else "other"


@web.middleware
async def middleware(request: web.Request, handler) -> web.StreamResponse:
    """Count and time every request by route template and status. Runs
    outside the problems middleware, so errors arrive here as responses."""
    metrics = request.app[METRICS]
    route = route_of(request)
    started = time.perf_counter()
    status = 500
    metrics.in_progress.labels(route).inc()
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as error:  # redirects and the like
        status = error.status
        raise
    except asyncio.CancelledError:
        status = 499  # the client went away first (nginx's convention)
        raise
    finally:
        metrics.in_progress.labels(route).dec()
        metrics.requests.labels(method_label(request.method), route, str(status)).inc()
        elapsed = time.perf_counter() - started
        if route == STREAM_ROUTE:
            metrics.stream_seconds.observe(elapsed)
        else:
            metrics.request_seconds.labels(route).observe(elapsed)
