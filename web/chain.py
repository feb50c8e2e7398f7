"""The one middleware around every request, and the one hook on every
response's headers.

In order, outermost first: the request id (web/requestlog.py), the request
metrics (web/instrumentation.py), errors answered as problems
(web/problems.py), the Host check (web/hosts.py), CORS preflights
(web/cors.py) and access keys (web/auth.py). They were six middlewares and
three on_response_prepare hooks; as one frame each, a stored stream's
route does the same checks for a fraction of the calls (issue 15: measured
with py-spy on `make bench`'s stored clip at c64).
"""

import asyncio
import time

from aiohttp import web

from web import auth, cors, hosts, instrumentation, problems, requestlog
from web.requestlog import REQUEST_ID
from web.responses import EVERY_RESPONSE


@web.middleware
async def middleware(request: web.Request, handler) -> web.StreamResponse:
    requestlog.assign_id(request)
    route = instrumentation.start(request)
    started = time.perf_counter()
    status = 500
    try:
        try:
            hosts.check(request)
            response = cors.preflight(request)
            if response is None:
                auth.check(request)
                response = await handler(request)
        except Exception as error:
            # A Problem, a failure, or a redirect (raised again, for aiohttp).
            response = problems.answer(request, error)
        status = response.status
        return response
    except web.HTTPException as error:  # redirects and the like
        status = error.status
        raise
    except asyncio.CancelledError:
        status = 499  # the client went away first (nginx's convention)
        raise
    finally:
        instrumentation.finish(request, route, started, status)


async def prepare_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: what every response carries, errors and streams
    included (their headers go out before the handler returns): the request
    id, the headers of EVERY_RESPONSE, and CORS for an allowed origin."""
    if REQUEST_ID in request:
        response.headers["X-Request-ID"] = request[REQUEST_ID]
    headers = response.headers
    for name, value in EVERY_RESPONSE.items():
        if name not in headers:
            headers[name] = value
    cors.add_headers(request, response)
