"""Prometheus metrics: one registry per app, served at /metrics.

Label values come only from fixed sets (route templates, status codes,
reasons, outcomes) or from clip ids capped at METRICS_MAX_CLIP_SERIES, so
no client address, raw path, query string or other input can grow the
number of series. aiohttp-prometheus-exporter serves the registry; its
server middleware (labels by client address) and client trace config
(labels by upstream host, taken from user-supplied URLs, and a callback
per received chunk on the streaming hot path) are deliberately not used.
"""

import asyncio
import contextlib
import hmac
import time

import prometheus_client
from aiohttp import web
from aiohttp_prometheus_exporter.handler import metrics as exporter_handler
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

from db import POOL
from handlers.access import route_of
from handlers.problems import DB_FAILURE, Problem
from settings import SETTINGS

# `*_created` series double every counter for no dashboard's benefit.
prometheus_client.disable_created_metrics()

END_REASONS = ("complete", "client_gone", "upstream_error", "timeout")
UPSTREAM_OUTCOMES = ("ok", "4xx", "5xx", "timeout", "connect_error", "refused")
API_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
STREAM_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
STREAM_ROUTE = "/clips/{clip_id}/stream"


class Metrics:
    def __init__(self, max_clip_series: int = 500) -> None:
        self.registry = registry = CollectorRegistry()
        self.max_clip_series = max_clip_series
        self._clip_labels: set[str] = set()

        self.requests = Counter(
            "clips_http_requests_total",
            "HTTP requests answered, by method, route template and status",
            ["method", "route", "status"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "clips_http_request_duration_seconds",
            "Time to answer an API request (streams excluded), by route template",
            ["route"],
            buckets=API_BUCKETS,
            registry=registry,
        )
        self.stream_seconds = Histogram(
            "clips_stream_duration_seconds",
            "Duration of stream responses, first to last byte",
            buckets=STREAM_BUCKETS,
            registry=registry,
        )
        self.in_progress = Gauge(
            "clips_http_requests_in_progress",
            "Requests being handled now, by route template",
            ["route"],
            registry=registry,
        )
        self.plays = Counter(
            "clips_plays_total",
            "Plays counted and committed to the database",
            registry=registry,
        )
        self.streams_started = Counter(
            "clips_streams_started_total",
            'Stream responses started, by clip (at most METRICS_MAX_CLIP_SERIES ids, then "other")'
            " and audio source",
            ["clip_id", "source"],
            registry=registry,
        )
        self.streams_ended = Counter(
            "clips_streams_ended_total",
            "Stream responses ended, by reason",
            ["reason"],
            registry=registry,
        )
        self.streams_in_flight = Gauge(
            "clips_streams_in_flight", "Streams being sent now", registry=registry
        )
        self.stream_bytes = Counter(
            "clips_stream_bytes_total",
            "Audio bytes sent to listeners, by source",
            ["source"],
            registry=registry,
        )
        self.upstream_requests = Counter(
            "clips_upstream_requests_total",
            "Requests to audio origins, by outcome",
            ["outcome"],
            registry=registry,
        )
        self.upstream_ttfb = Histogram(
            "clips_upstream_ttfb_seconds",
            "Time from sending an upstream request to its response headers",
            buckets=(*API_BUCKETS, 5.0, 10.0),  # up to UPSTREAM_HEADERS_TIMEOUT's default
            registry=registry,
        )
        self.db_errors = Counter(
            "clips_db_errors_total",
            "Database operations that failed, by kind",
            ["kind"],
            registry=registry,
        )
        for reason in END_REASONS:
            self.streams_ended.labels(reason)
        for outcome in UPSTREAM_OUTCOMES:
            self.upstream_requests.labels(outcome)
        for source in ("remote", "stored"):
            self.stream_bytes.labels(source)
        for kind in ("unavailable", "query", "play_write"):
            self.db_errors.labels(kind)
        prometheus_client.ProcessCollector(registry=registry)
        prometheus_client.PlatformCollector(registry=registry)
        prometheus_client.GCCollector(registry=registry)
        registry.register(_TaskCollector())

    def clip_label(self, clip_id: int) -> str:
        """The clip's own label while fewer than the cap exist, else "other"."""
        label = str(clip_id)
        if label in self._clip_labels:
            return label
        if len(self._clip_labels) < self.max_clip_series:
            self._clip_labels.add(label)
            return label
        return "other"

    def watch_pool(self, app: web.Application) -> None:
        """Export the app's pool size and use, read at scrape time."""
        self.registry.register(_PoolCollector(app))


class _TaskCollector:
    """Asyncio tasks alive in this worker, read at scrape time: a count that
    only grows is a leak."""

    def collect(self):
        tasks = GaugeMetricFamily("clips_event_loop_tasks", "Asyncio tasks alive in this worker")
        with contextlib.suppress(RuntimeError):  # no running loop: nothing to count
            tasks.add_metric([], len(asyncio.all_tasks()))
        return [tasks]


class _PoolCollector:
    def __init__(self, app: web.Application):
        self._app = app

    def collect(self):
        size = GaugeMetricFamily("clips_db_pool_connections", "Open pool connections")
        in_use = GaugeMetricFamily("clips_db_pool_connections_in_use", "Pool connections in use")
        limit = GaugeMetricFamily("clips_db_pool_max_connections", "DB_POOL_MAX of this process")
        pool = self._app.get(POOL)
        if pool is not None:
            size.add_metric([], pool.get_size())
            in_use.add_metric([], pool.get_size() - pool.get_idle_size())
            limit.add_metric([], pool.get_max_size())
        return [size, in_use, limit]


METRICS = web.AppKey("METRICS", Metrics)


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
        metrics.requests.labels(request.method, route, str(status)).inc()
        if (failure := request.get(DB_FAILURE)) is not None:
            metrics.db_errors.labels(failure).inc()
        elapsed = time.perf_counter() - started
        if route == STREAM_ROUTE:
            metrics.stream_seconds.observe(elapsed)
        else:
            metrics.request_seconds.labels(route).observe(elapsed)


def routes(metrics: Metrics) -> list[web.RouteDef]:
    serve = exporter_handler(metrics.registry)

    async def scrape(request: web.Request) -> web.StreamResponse:
        token = request.app[SETTINGS].metrics_token
        if token:
            given = request.headers.get("Authorization", "").removeprefix("Bearer ")
            if not hmac.compare_digest(given.encode(), token.encode()):
                raise Problem(
                    401,
                    "/metrics needs the bearer token METRICS_TOKEN",
                    headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
                )
        return await serve(request)

    return [web.get("/metrics", scrape)]
