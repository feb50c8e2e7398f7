"""Prometheus metrics: the app's own registry and every series in it.

Served at /metrics by handlers/metrics.py; requests are counted and timed
by web/instrumentation.py, streams by streaming/plays.py.

Label values come only from fixed sets (route templates, status codes,
reasons, outcomes) or from clip ids capped at METRICS_MAX_CLIP_SERIES, so
no client address, raw path, query string or other input can grow the
number of series. aiohttp-prometheus-exporter serves the registry; its
server middleware (labels by client address) and client trace config
(labels by upstream host, taken from user-supplied URLs, and a callback
per received chunk on the streaming hot path) are deliberately not used.

With WORKERS > 1 each worker writes its series to files in a directory the
supervisor owns (prometheus_client's multiprocess mode: the directory must
be in PROMETHEUS_MULTIPROC_DIR before the worker imports prometheus_client),
and a scrape, whichever worker answers it, reads every worker's files: one
scrape reports the whole process group. Counters and histograms add up
across workers, dead ones included (their counts stay in the files);
in-flight and pool-use gauges are the sum over live workers; event-loop
tasks, pool size limits and process_* are per worker (a `pid` label).
Values that the single-process registry reads at scrape time (tasks, the
pool) are sampled every SAMPLE_SECONDS instead, as only a worker can read
its own.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Protocol

import prometheus_client
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess, values
from prometheus_client.core import GaugeMetricFamily, Metric

# `*_created` series double every counter for no dashboard's benefit.
prometheus_client.disable_created_metrics()

END_REASONS = ("complete", "client_gone", "upstream_error", "timeout", "send_timeout")
UPSTREAM_OUTCOMES = ("ok", "4xx", "5xx", "timeout", "connect_error", "refused", "busy")
API_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
STREAM_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
DB_ERROR_KINDS = ("unavailable", "query", "play_write")
STORAGE_OPERATIONS = ("read", "write", "delete")
JOB_KINDS = ("preview", "peaks")
# done; retried later; failed for good; released (given back at shutdown);
# lost (its claim was taken over, or the outcome could not be written).
JOB_OUTCOMES = ("done", "retried", "failed", "released", "lost")
JOB_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
CACHE_RESULTS = ("hit", "miss", "coalesced", "revalidated", "stale", "bypass")
# How often a worker writes its sampled gauges (tasks, pool) in multiprocess
# mode: well under any scrape interval, and a few file writes each time.
SAMPLE_SECONDS = 1.0


class Children:
    """The children of one labelled series, each resolved once: `labels()`
    checks its arguments, builds a key and takes a lock on every call
    (about 3 µs apiece, several times per stream), a dict lookup does not.
    Only for label values from fixed sets (the rule above), so the dict
    stays as small as the series."""

    def __init__(self, family: Counter | Gauge | Histogram) -> None:
        self._family = family
        self._children: dict[tuple[str, ...], Counter | Gauge | Histogram] = {}

    def __call__(self, *values: str):
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._family.labels(*values)
        return child


class Pool(Protocol):
    """What the pool gauges read (asyncpg.Pool has it)."""

    def get_size(self) -> int: ...
    def get_idle_size(self) -> int: ...
    def get_max_size(self) -> int: ...


class Metrics:
    """Every series of the app. `registry` is what /metrics serves: the
    app's own, or with `multiprocess_dir` (WORKERS > 1) a reader of every
    worker's files in it."""

    def __init__(self, max_clip_series: int = 500, multiprocess_dir: Path | None = None) -> None:
        self.max_clip_series = max_clip_series
        self.multiprocess_dir = multiprocess_dir
        self._clip_labels: set[str] = set()
        self._pool_of: Callable[[], Pool | None] = lambda: None
        if multiprocess_dir is None:
            self.registry = registry = CollectorRegistry()
        else:
            if values.ValueClass is values.MutexValue:
                raise RuntimeError(
                    "multiprocess metrics need PROMETHEUS_MULTIPROC_DIR set before"
                    " prometheus_client is imported"
                )
            # The series live in files, not in a registry: each is counted
            # once, by the MultiProcessCollector that reads them all.
            registry = None
            self.registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(self.registry, str(multiprocess_dir))
            self.registry.register(_WorkerProcesses(multiprocess_dir))
            prometheus_client.PlatformCollector(registry=self.registry)

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
            multiprocess_mode="livesum",
        )
        self.plays = Counter(
            "clips_plays_total",
            "Plays counted and committed to the database",
            registry=registry,
        )
        self.plays_repeated = Counter(
            "clips_plays_repeated_total",
            "Plays not counted: a listener's repeat within PLAY_DEDUP_SECONDS",
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
            "clips_streams_in_flight",
            "Streams being sent now",
            registry=registry,
            multiprocess_mode="livesum",
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
        self.storage_errors = Counter(
            "clips_storage_errors_total",
            "Media store operations (MEDIA_DIR) that failed, by operation",
            ["operation"],
            registry=registry,
        )
        self.jobs = Counter(
            "clips_jobs_total",
            "Preview and peaks jobs ended, by kind and outcome",
            ["kind", "outcome"],
            registry=registry,
        )
        self.job_seconds = Histogram(
            "clips_job_duration_seconds",
            "Time one job took, claim to outcome, by kind",
            ["kind"],
            buckets=JOB_BUCKETS,
            registry=registry,
        )
        for kind in JOB_KINDS:
            self.job_seconds.labels(kind)
            for outcome in JOB_OUTCOMES:
                self.jobs.labels(kind, outcome)
        self.cache_requests = Counter(
            "clips_cache_requests_total",
            "Remote streams by what the cache of remote clips did (CACHE_MAX_BYTES > 0)",
            ["result"],
            registry=registry,
        )
        self.cache_bytes = Gauge(
            "clips_cache_bytes",
            "Bytes of audio held in CACHE_DIR, as this worker counts them",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.cache_evictions = Counter(
            "clips_cache_evictions_total",
            "Cache entries evicted to stay within CACHE_MAX_BYTES",
            registry=registry,
        )
        # The per-request series, through their resolved children.
        self.requests_of = Children(self.requests)
        self.request_seconds_of = Children(self.request_seconds)
        self.in_progress_of = Children(self.in_progress)
        self.streams_started_of = Children(self.streams_started)
        self.streams_ended_of = Children(self.streams_ended)
        self.stream_bytes_of = Children(self.stream_bytes)
        self.cache_requests_of = Children(self.cache_requests)
        self.upstream_requests_of = Children(self.upstream_requests)
        for reason in END_REASONS:
            self.streams_ended.labels(reason)
        for result in CACHE_RESULTS:
            self.cache_requests.labels(result)
        for outcome in UPSTREAM_OUTCOMES:
            self.upstream_requests.labels(outcome)
        for source in ("remote", "stored"):
            self.stream_bytes.labels(source)
        for kind in DB_ERROR_KINDS:
            self.db_errors.labels(kind)
        for operation in STORAGE_OPERATIONS:
            self.storage_errors.labels(operation)
        if registry is not None:
            prometheus_client.ProcessCollector(registry=registry)
            prometheus_client.PlatformCollector(registry=registry)
            prometheus_client.GCCollector(registry=registry)
            registry.register(_TaskCollector())
            registry.register(_PoolCollector(lambda: self._pool_of()))
        else:
            self._sampled = _SampledGauges()

    def clip_label(self, clip_id: int) -> str:
        """The clip's own label while fewer than the cap exist, else "other"."""
        label = str(clip_id)
        if label in self._clip_labels:
            return label
        if len(self._clip_labels) < self.max_clip_series:
            self._clip_labels.add(label)
            return label
        return "other"

    def watch_pool(self, pool_of: Callable[[], Pool | None]) -> None:
        """Export the size and use of the pool `pool_of()` returns (None
        before it opens), read at scrape time (or sampled: multiprocess)."""
        self._pool_of = pool_of

    def sample(self) -> None:
        """Write this worker's sampled gauges (multiprocess mode only)."""
        if self.multiprocess_dir is not None:
            self._sampled.update(self._pool_of())


async def sampling_ctx(app: web.Application) -> AsyncIterator[None]:
    """Samples the worker's gauges every SAMPLE_SECONDS in multiprocess
    mode; nothing in a single process, whose registry reads them at scrape
    time."""
    metrics = app[METRICS]
    if metrics.multiprocess_dir is None:
        yield
        return

    async def sample_forever() -> None:
        while True:
            metrics.sample()
            await asyncio.sleep(SAMPLE_SECONDS)

    sampler = asyncio.create_task(sample_forever())
    try:
        yield
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler


class _TaskCollector:
    """Asyncio tasks alive in this worker, read at scrape time: a count that
    only grows is a leak."""

    def collect(self):
        tasks = GaugeMetricFamily("clips_event_loop_tasks", "Asyncio tasks alive in this worker")
        with contextlib.suppress(RuntimeError):  # no running loop: nothing to count
            tasks.add_metric([], len(asyncio.all_tasks()))
        return [tasks]


class _PoolCollector:
    def __init__(self, pool_of: Callable[[], Pool | None]):
        self._pool_of = pool_of

    def collect(self):
        size = GaugeMetricFamily("clips_db_pool_connections", "Open pool connections")
        in_use = GaugeMetricFamily("clips_db_pool_connections_in_use", "Pool connections in use")
        limit = GaugeMetricFamily("clips_db_pool_max_connections", "DB_POOL_MAX of this process")
        pool = self._pool_of()
        if pool is not None:
            size.add_metric([], pool.get_size())
            in_use.add_metric([], pool.get_size() - pool.get_idle_size())
            limit.add_metric([], pool.get_max_size())
        return [size, in_use, limit]


class _SampledGauges:
    """The tasks and pool gauges as files (multiprocess mode). `live*`
    modes drop a worker's values once the supervisor marks it dead."""

    def __init__(self) -> None:
        self.tasks = Gauge(
            "clips_event_loop_tasks",
            "Asyncio tasks alive in this worker",
            registry=None,
            multiprocess_mode="liveall",
        )
        self.pool_size = Gauge(
            "clips_db_pool_connections",
            "Open pool connections",
            registry=None,
            multiprocess_mode="livesum",
        )
        self.pool_in_use = Gauge(
            "clips_db_pool_connections_in_use",
            "Pool connections in use",
            registry=None,
            multiprocess_mode="livesum",
        )
        self.pool_max = Gauge(
            "clips_db_pool_max_connections",
            "DB_POOL_MAX of this process",
            registry=None,
            multiprocess_mode="liveall",
        )

    def update(self, pool: Pool | None) -> None:
        self.tasks.set(len(asyncio.all_tasks()))
        if pool is not None:
            self.pool_size.set(pool.get_size())
            self.pool_in_use.set(pool.get_size() - pool.get_idle_size())
            self.pool_max.set(pool.get_max_size())


class _WorkerProcesses:
    """process_* of every live worker, read from /proc at scrape time with
    a `pid` label. A live worker is one with a `liveall` gauge file in the
    directory (clips_event_loop_tasks writes one as soon as it samples;
    marking a worker dead removes it)."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory

    def collect(self) -> list[Metric]:
        families: dict[str, Metric] = {}
        for path in sorted(self._directory.glob("gauge_liveall_*.db")):
            pid = path.stem.rpartition("_")[2]
            reader = prometheus_client.ProcessCollector(pid=lambda pid=pid: pid, registry=None)
            for family in reader.collect():  # nothing once the process is gone
                merged = families.setdefault(
                    family.name, Metric(family.name, family.documentation, family.type)
                )
                for sample in family.samples:
                    merged.add_sample(sample.name, {**sample.labels, "pid": pid}, sample.value)
        return list(families.values())


METRICS = web.AppKey("METRICS", Metrics)
