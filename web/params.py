"""Turning request input into typed values, or a 400 that names each problem."""

import asyncio
import json
from typing import TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from schemas.fields import BIGINT_MAX, positive_bigint
from settings import SETTINGS
from web.problems import Problem

Model = TypeVar("Model", bound=BaseModel)


def parse_id(raw: str, name: str = "clip_id") -> int:
    value = positive_bigint(raw)
    if value is None:
        raise Problem(
            400,
            f"{name} must be a positive integer up to {BIGINT_MAX}, not {raw[:40]!r}",
            errors=[{"field": name, "reason": "not a positive 64-bit integer"}],
        )
    return value


def _field_errors(error: ValidationError) -> list[dict[str, str]]:
    return [
        {"field": ".".join(str(p) for p in e["loc"]) or "body", "reason": e["msg"]}
        for e in error.errors(include_url=False)
    ]


def _invalid(error: ValidationError, where: str) -> Problem:
    errors = _field_errors(error)
    fields = ", ".join(e["field"] for e in errors)
    return Problem(400, f"Invalid {where}: {fields}", errors=errors)


def validate(model: type[Model], data: object, where: str) -> Model:
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise _invalid(error, where) from None


def parse_query(model: type[Model], request: web.Request) -> Model:
    return validate(model, dict(request.query), "query parameters")


async def parse_json(model: type[Model], request: web.Request) -> Model:
    if request.content_type != "application/json":
        raise Problem(
            415,
            f"Send the body as application/json, not {request.content_type or 'nothing'}",
            headers={"Accept-Post": "application/json"},
        )
    # At most 64 KiB (the app's client_max_size, else 413): one upload chunk,
    # so the upload's pace rule makes UPLOAD_IDLE_SECONDS its whole deadline;
    # a body sent a byte at a time cannot hold the connection.
    idle = request.app[SETTINGS].upload_idle_seconds
    try:
        async with asyncio.timeout(idle):
            raw = await request.read()
    except TimeoutError:
        raise Problem(
            408, f"The body did not arrive within UPLOAD_IDLE_SECONDS ({idle:g} s)"
        ) from None
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise Problem(400, f"The body is not valid JSON: {error}") from None
    except RecursionError:  # 64 KiB of "[" fits under the size limit
        raise Problem(400, "The body is not valid JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise Problem(400, "The body must be a JSON object")
    return validate(model, data, "body")
