"""The OpenAPI document stays true: routes match it, and schemathesis finds
no server error and no response that breaks it, against the real app."""

import asyncio
import json
import os
import re
import sys
from pathlib import Path

import jsonschema_rs
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
        if path not in ("/openapi.json", "/docs", "/docs/{asset}", "/favicon.ico", "/metrics")
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
    # Works offline: every script and style is one of the server's own files.
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert {"/docs/swagger-ui-bundle.js", "/docs/docs.js", "/docs/swagger-ui.css"} <= set(assets)
    for asset in assets:
        assert asset.startswith("/"), asset
        response = await client.get(asset)
        assert response.status == 200, asset
        assert response.content_type in ("text/javascript", "text/css", "application/json")
    assert (await client.get("/docs/nothing.js")).status == 404
    favicon = await client.get("/favicon.ico")
    assert favicon.status == 204 and "max-age" in favicon.headers["Cache-Control"]


def test_ids_are_int64_never_a_maximum_javascript_rounds():
    text = json.dumps(DOCUMENT)
    assert str(2**63 - 1) not in text.replace(f"1 to {2**63 - 1}", "")
    clip = DOCUMENT["components"]["schemas"]["Clip"]
    assert clip["properties"]["id"]["format"] == "int64"
    assert clip["examples"][0].keys() == clip["properties"].keys()


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


def schema_of(name: str) -> dict:
    """A component of the document, as a standalone JSON Schema."""
    return {"$ref": f"#/components/schemas/{name}", "components": DOCUMENT["components"]}


def check(body: object, name: str) -> None:
    jsonschema_rs.Draft202012Validator(schema_of(name)).validate(body)


async def test_real_clip_responses_carry_exactly_the_documented_fields(client, make_clip, origin):
    """The schema is generated from the shape responses are built from: every
    field a clip carries is documented, and `required` lists them all."""
    clip = DOCUMENT["components"]["schemas"]["Clip"]
    await make_clip(media_path="tune.wav", content_type="audio/wav")
    new = {"title": "Remote", "genre": "rock", "duration_seconds": 20.0}
    created = await client.post(
        "/clips", json={**new, "audio_url": str(origin.make_url("/audio/tune.wav"))}
    )
    assert created.status == 201
    bodies = [await created.json(), *await (await client.get("/clips")).json()]
    assert len(bodies) == 3
    for body in bodies:
        assert set(body) == set(clip["properties"]) == set(clip["required"])
        check(body, "Clip")
    shown = await client.get(f"/clips/{bodies[0]['id']}")
    check(await shown.json(), "Clip")
    stats = await (await client.get(f"/clips/{bodies[0]['id']}/stats")).json()
    check(stats, "ClipStats")
    assert set(stats) == set(clip["properties"]) | {"plays_by_day"}


def test_list_parameters_are_documented_with_their_constraints():
    (operation,) = [DOCUMENT["paths"]["/clips"]["get"]]
    parameters = {p["name"]: p["schema"] for p in operation["parameters"]}
    assert set(parameters) == {"genre", "q", "sort", "limit", "cursor"}
    assert parameters["limit"] == {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}
    assert parameters["sort"]["enum"] == ["newest", "popular", "title"]
    assert parameters["genre"]["maxLength"] == 40 and "pattern" in parameters["genre"]
    assert parameters["q"] == {"type": "string", "minLength": 1, "maxLength": 200}
    assert parameters["cursor"]["maxLength"] == 1000


def test_the_readmes_example_clip_has_exactly_the_documented_fields():
    """The README shows a clip by hand: it must not drift from the shape."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    example = readme.split("A clip:\n\n```json\n", 1)[1].split("```", 1)[0]
    clip = DOCUMENT["components"]["schemas"]["Clip"]
    assert set(json.loads(example)) == set(clip["properties"])
