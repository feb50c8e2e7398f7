"""Liveness and readiness probes."""

from aiohttp import web

from db import POOL, DatabaseUnavailable
from db.health import applied_migrations
from db.migrate import EXPECTED_MIGRATIONS
from web.problems import Problem
from web.responses import json_response

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    """The process is alive and serving; says nothing about the database."""
    return json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    """Ready when PostgreSQL answers and every migration is applied."""
    try:
        applied = await applied_migrations(request.app[POOL])
    except DatabaseUnavailable as error:
        cause = type(error.__cause__).__name__
        raise Problem(503, f"database unreachable: {cause}", headers={"Retry-After": "2"}) from None
    missing = sorted(request.app[EXPECTED_MIGRATIONS] - applied)
    if missing:
        raise Problem(503, f"schema is behind: migrations not applied: {', '.join(missing)}")
    return json_response({"status": "ready", "migrations": len(applied)})
