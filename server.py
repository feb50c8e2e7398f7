"""Soundverse Clips: assembly of the application, and its entry point."""

import logging

from aiohttp import web

from db import pool_ctx
from db.embedded import database
from db.migrate import migrate_ctx
from db.plays import plays_ctx
from handlers import clips, health, metrics, problems, streams
from handlers.metrics import METRICS, Metrics
from handlers.upstream import upstream_ctx
from settings import SETTINGS, Settings, load_settings

# JSON bodies are small; anything bigger is refused with 413 before parsing.
MAX_JSON_BODY = 64 * 1024

# Options of the HTTP server itself (also used by the tests' server):
# cancel a handler when its client goes away, so an abandoned stream
# releases its upstream connection at once.
SERVER_OPTIONS = {"handler_cancellation": True}


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[problems.middleware], client_max_size=MAX_JSON_BODY)
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app.cleanup_ctx.extend(
        [migrate_ctx, pool_ctx, plays_ctx(on_commit=app[METRICS].plays.inc), upstream_ctx]
    )
    app.on_response_prepare.append(streams.count_play)
    app.add_routes([*health.routes, *clips.routes, *streams.routes, *metrics.routes(app[METRICS])])
    return app


def main() -> None:
    settings = load_settings()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    with database(settings) as url:
        app = create_app(settings.model_copy(update={"database_url": url}))
        web.run_app(app, host=settings.host, port=settings.port, **SERVER_OPTIONS)


if __name__ == "__main__":
    main()
