"""Liveness and readiness probes."""

from aiohttp import web

from db import POOL, UNAVAILABLE
from db.health import applied_migrations
from db.migrate import migration_ids
from handlers.problems import Problem
from handlers.responses import json_response

routes = web.RouteTableDef()

# The schema this code needs, read once from migrations/.
EXPECTED = migration_ids()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    """The process is alive and serving; says nothing about the database."""
    return json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    """Ready when PostgreSQL answers and every migration is applied."""
    try:
        applied = await applied_migrations(request.app[POOL])
    except UNAVAILABLE as error:
        raise Problem(
            503, f"database unreachable: {type(error).__name__}", headers={"Retry-After": "2"}
        ) from None
    missing = sorted(EXPECTED - applied)
    if missing:
        raise Problem(503, f"schema is behind: migrations not applied: {', '.join(missing)}")
    return json_response({"status": "ready", "migrations": len(applied)})
