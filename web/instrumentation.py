"""Request metrics: every request counted and timed by route template and status
(web/chain.py calls `start` and `finish` around each request).

Label values are route templates, never raw paths (web/requestlog.py's
route_of), and methods from a fixed set, so no input grows the number of
series. Streams are timed in
their own histogram: their life is the listener's, not the server's speed.
"""

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


def start(request: web.Request) -> str:
    """A request begins: counted in progress. Returns its route template,
    which `finish` takes."""
    route = route_of(request)
    request.app[METRICS].in_progress_of(route).inc()
    return route


def finish(request: web.Request, route: str, started: float, status: int) -> None:
    """The request is answered (or abandoned: 499) with `status`: counted and
    timed from `started` (time.perf_counter())."""
    metrics = request.app[METRICS]
    metrics.in_progress_of(route).dec()
    metrics.requests_of(method_label(request.method), route, str(status)).inc()
    elapsed = time.perf_counter() - started
    if route == STREAM_ROUTE:
        metrics.stream_seconds.observe(elapsed)
    else:
        metrics.request_seconds_of(route).observe(elapsed)
