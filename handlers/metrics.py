"""GET /metrics: the app's registry in Prometheus' text format, behind
METRICS_TOKEN when it is set."""

import hmac

from aiohttp import web
from aiohttp_prometheus_exporter.handler import metrics as exporter_handler

from metrics.registry import Metrics
from settings import SETTINGS
from web.problems import Problem


def routes(metrics: Metrics) -> list[web.RouteDef]:
    serve = exporter_handler(metrics.registry)

    async def scrape(request: web.Request) -> web.StreamResponse:
        token = request.app[SETTINGS].metrics_token
        if token:
            given = request.headers.get("Authorization", "").removeprefix("Bearer ")
            # surrogateescape: header bytes that are not UTF-8 are a wrong
            # token (401), not an encoding error (500); see web/auth.py.
            if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), token.encode()):
                raise Problem(
                    401,
                    "/metrics needs the bearer token METRICS_TOKEN",
                    headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
                )
        return await serve(request)

    return [web.get("/metrics", scrape)]
