"""The OpenAPI document stays true: routes match it, and schemathesis finds
no server error and no response that breaks it, against the real app."""

import asyncio
import os
import sys
from pathlib import Path

from aiohttp import web

from handlers.docs import DOCUMENT

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


def app_operations(app: web.Application) -> set[tuple[str, str]]:
    return {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.method not in ("HEAD", "*") and route.resource is not None
    }


def documented_operations() -> set[tuple[str, str]]:
    return {(method, path) for path, item in DOCUMENT["paths"].items() for method in item}


async def test_every_route_is_documented_and_every_documented_route_exists(app):
    served = {
        (method, path.rstrip("/") or "/")
        for method, path in app_operations(app)
        if path not in ("/openapi.json", "/docs", "/metrics")
    }
    assert served == documented_operations()


async def test_openapi_and_docs_are_served(client):
    spec = await client.get("/openapi.json")
    assert spec.status == 200
    assert (await spec.json())["openapi"] == "3.1.0"
    page = await client.get("/docs")
    assert page.status == 200
    assert page.content_type == "text/html"
    html = await page.text()
    assert "/openapi.json" in html and "<script src=" not in html  # works offline


async def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    client, make_clip, tmp_path
):
    await make_clip(genre="rock", media_path="small.mp3")
    await make_clip(genre="jazz", media_path="tune.wav", content_type="audio/wav")
    url = str(client.make_url("/openapi.json"))
    process = await asyncio.create_subprocess_exec(
        str(SCHEMATHESIS),
        "run",
        url,
        "--checks",
        "not_a_server_error,status_code_conformance,content_type_conformance,"
        "response_schema_conformance,response_headers_conformance",
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        "25",
        "--workers",
        "1",
        "--seed",
        "1",
        "--suppress-health-check",
        "all",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,
        env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_HOOKS": ""},
    )
    output, _ = await process.communicate()
    assert process.returncode == 0, output.decode()[-6000:]
