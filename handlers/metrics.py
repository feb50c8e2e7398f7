"""Prometheus metrics: one registry per app, served at /metrics."""

from aiohttp import web
from aiohttp_prometheus_exporter.handler import metrics as metrics_handler
from prometheus_client import CollectorRegistry, Counter, Gauge

END_REASONS = ("complete", "client_gone", "upstream_error", "timeout")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.plays = Counter(
            "clips_plays_total",
            "Plays counted and committed to the database",
            registry=self.registry,
        )
        self.streams_started = Counter(
            "clips_streams_started_total",
            "Stream responses started, by audio source",
            ["source"],
            registry=self.registry,
        )
        self.streams_ended = Counter(
            "clips_streams_ended_total",
            "Stream responses ended, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.streams_in_flight = Gauge(
            "clips_streams_in_flight", "Streams being sent now", registry=self.registry
        )
        for reason in END_REASONS:
            self.streams_ended.labels(reason)
        for source in ("remote", "stored"):
            self.streams_started.labels(source)


METRICS = web.AppKey("METRICS", Metrics)


def routes(metrics: Metrics) -> list[web.RouteDef]:
    return [web.get("/metrics", metrics_handler(metrics.registry))]
