"""The API described as OpenAPI 3.1 at /openapi.json, and a docs page at /docs.

Only the paths and their responses are written here. Every schema (a clip,
its stats, request bodies, query parameters, the problem body) is generated
by pydantic from the definitions the handlers validate and render with
(schemas/), so the document cannot drift from the responses;
tests/test_openapi.py fuzzes the real app against it with schemathesis.
"""

import importlib.util
from http import HTTPStatus
from pathlib import Path

from aiohttp import web
from pydantic import BaseModel, TypeAdapter

from schemas.clips import Clip, ClipChanges, ClipStats, ListQuery, NewClip, UploadForm
from schemas.fields import BIGINT_MAX
from schemas.peaks import Peaks, PeaksQuery
from schemas.problems import Problem as ProblemBody
from web.auth import STREAM_ROUTE
from web.problems import Problem
from web.responses import json_response

routes = web.RouteTableDef()

HERE = Path(__file__).parent
DOCS_PAGE = HERE / "docs.html"

# Swagger UI's files as swagger-ui-py ships them (a pinned runtime
# requirement, so the page works offline and in the image). Found without
# importing the package: only its static files are used.
SWAGGER_UI = Path(*importlib.util.find_spec("swagger_ui").submodule_search_locations) / "static"
DOCS_ASSETS = {
    "swagger-ui-bundle.js": (SWAGGER_UI / "swagger-ui-bundle.js", "text/javascript"),
    "swagger-ui.css": (SWAGGER_UI / "swagger-ui.css", "text/css"),
    "docs.js": (HERE / "docs.js", "text/javascript"),
}

# Scripts and styles only from files this server sends (no inline code, no
# eval), the document only from here: nothing injected into the page could
# run, load or post anything. Swagger UI's icons are data: SVGs.
DOCS_CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)

# Response shapes are documented as they are sent, request shapes as they
# are validated.
SHAPES = {
    "Clip": ("serialization", Clip),
    "ClipStats": ("serialization", ClipStats),
    "NewClip": ("validation", NewClip),
    "ClipChanges": ("validation", ClipChanges),
    "Peaks": ("serialization", Peaks),
    "Problem": ("serialization", ProblemBody),
}


def generated_schemas() -> tuple[dict[str, dict], dict[str, dict]]:
    """($ref by shape name, the components' schemas), by pydantic."""
    refs, top = TypeAdapter.json_schemas(
        [(name, mode, TypeAdapter(shape)) for name, (mode, shape) in SHAPES.items()],
        ref_template="#/components/schemas/{model}",
    )
    return {name: ref for (name, _), ref in refs.items()}, top["$defs"]


REFS, SCHEMAS = generated_schemas()


def query_parameters(model: type[BaseModel]) -> list[dict]:
    """A model's fields as OpenAPI query parameters, constraints included.
    A query parameter is absent rather than null: the null branch goes."""
    schema = model.model_json_schema()
    parameters = []
    for name, field in schema["properties"].items():
        options = [o for o in field.get("anyOf", [field]) if o.get("type") != "null"]
        (value,) = options
        value = {k: v for k, v in value.items() if k not in ("title", "description")}
        if "default" in field and field["default"] is not None:
            value["default"] = field["default"]
        parameters.append(
            {
                "name": name,
                "in": "query",
                "required": name in schema.get("required", ()),
                "description": field.get("description", ""),
                "schema": value,
            }
        )
    return parameters


def upload_schema() -> dict:
    """The multipart form: UploadForm's fields and the audio file."""
    schema = UploadForm.model_json_schema()
    schema.pop("title", None)
    schema["properties"]["audio"] = {"type": "string", "format": "binary"}
    schema["required"] = [*schema.get("required", []), "audio"]
    return schema


# What each error status means here: /docs shows it, with a problem body
# as the server would send it.
PROBLEMS = {
    400: "A parameter, header or body field is wrong; `errors` names each field",
    401: "API keys are set and the request has none, or an unknown one",
    403: "The key may not do this (a read key asked to write)",
    404: "No clip has that id (or a stored clip's audio file is missing)",
    408: "The body arrived too slowly (UPLOAD_IDLE_SECONDS, UPLOAD_MAX_SECONDS)",
    412: "If-Match does not match the clip's current ETag",
    413: "The body is larger than MAX_UPLOAD_BYTES (or 64 KiB of JSON)",
    415: "Not JSON or multipart, or audio in a format the server does not take",
    416: "The Range starts past the end of the audio",
    422: "The audio's duration or bitrate cannot be read from its bytes",
    500: "The server failed; the request_id ties it to a log line",
    502: "The origin of a remote clip failed or refused",
    503: (
        "PostgreSQL or the media bucket is unreachable, or a limit is reached;"
        " Retry-After says when to retry"
    ),
    504: "The origin of a remote clip did not answer in time",
    507: "The media store is full",
}


def problem(status: int) -> dict:
    """An error response: its meaning and an example body."""
    return {
        "description": PROBLEMS[status],
        "content": {
            "application/problem+json": {
                "schema": REFS["Problem"],
                "example": {
                    "type": "about:blank",
                    "title": HTTPStatus(status).phrase,
                    "status": status,
                    # The meaning is Markdown for the page; the body is text.
                    "detail": PROBLEMS[status].replace("`", ""),
                    "request_id": "4f1c2a9e7b3d4c5e",
                },
            }
        },
    }


CLIP_ID = {
    "name": "clip_id",
    "in": "path",
    "required": True,
    "description": f"The clip's id, 1 to {BIGINT_MAX}",
    "schema": {"type": "integer", "minimum": 1, "maximum": BIGINT_MAX},
    "example": 1,
}
TIMESTAMP = {"type": "string", "format": "date-time"}
AUDIO = {"schema": {"type": "string", "format": "binary"}}
AUDIO_HEADERS = {
    name: {"schema": {"type": "string"}}
    for name in ("Content-Range", "Accept-Ranges", "ETag", "Last-Modified")
}
VARIANT = {
    "name": "variant",
    "in": "query",
    "required": False,
    "description": "A stored clip plays its MP3 preview once ready (`preview`, the default;"
    " the original until then, or if it failed); `original` plays the upload as it came."
    " Remote clips have only their original.",
    "schema": {"type": "string", "enum": ["preview", "original"], "default": "preview"},
}
STREAM_REQUEST_HEADERS = [
    {"name": name, "in": "header", "required": False, "schema": {"type": "string"}}
    for name in ("Range", "If-Range", "If-None-Match", "If-Modified-Since")
]


CLIP_RESPONSE = {
    "description": "The clip; ETag is the version of its metadata",
    "headers": {"ETag": {"schema": {"type": "string"}}},
    "content": {"application/json": {"schema": REFS["Clip"]}},
}
IF_MATCH = {"name": "If-Match", "in": "header", "required": False, "schema": {"type": "string"}}


def document() -> dict:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Soundverse Clips",
            "version": "1.0.0",
            "description": "Audio clip catalogue, seekable streaming and exact play counts.",
        },
        "tags": [
            {"name": "clips", "description": "The catalogue: list, show, create, change, delete"},
            {"name": "streams", "description": "Audio for `<audio>`: seekable, counted as plays"},
            {"name": "health", "description": "Probes for orchestrators and load balancers"},
        ],
        "paths": {
            "/clips": {
                "get": {
                    "tags": ["clips"],
                    "operationId": "listClips",
                    "summary": "A page of clips",
                    "parameters": query_parameters(ListQuery),
                    "responses": {
                        "200": {
                            "description": 'Clips; `Link: <…>; rel="next"` when more follow',
                            "headers": {"Link": {"schema": {"type": "string"}}},
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "array",
                                        "items": REFS["Clip"],
                                    }
                                }
                            },
                        },
                        "400": problem(400),
                        "503": problem(503),
                    },
                },
                "post": {
                    "tags": ["clips"],
                    "operationId": "createClip",
                    "summary": "Add a clip: JSON with a remote audio_url, or an upload",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": REFS["NewClip"]},
                            "multipart/form-data": {"schema": upload_schema()},
                        },
                    },
                    "responses": {
                        "201": {
                            "description": "Created",
                            "headers": {"Location": {"schema": {"type": "string"}}},
                            "content": {"application/json": {"schema": REFS["Clip"]}},
                        },
                        "400": problem(400),
                        "408": problem(408),
                        "413": problem(413),
                        "415": problem(415),
                        "422": problem(422),
                        "500": problem(500),
                        "503": problem(503),
                        "507": problem(507),
                    },
                },
            },
            "/clips/{clip_id}": {
                "get": {
                    "tags": ["clips"],
                    "operationId": "getClip",
                    "parameters": [CLIP_ID],
                    "responses": {
                        "200": CLIP_RESPONSE,
                        "400": problem(400),
                        "404": problem(404),
                        "503": problem(503),
                    },
                },
                "patch": {
                    "tags": ["clips"],
                    "operationId": "updateClip",
                    "summary": "Change some fields; If-Match with the ETag guards lost updates",
                    "parameters": [CLIP_ID, IF_MATCH],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": REFS["ClipChanges"]}},
                    },
                    "responses": {
                        "200": CLIP_RESPONSE,
                        "400": problem(400),
                        "404": problem(404),
                        "412": problem(412),
                        "413": problem(413),
                        "415": problem(415),
                        "503": problem(503),
                    },
                },
                "delete": {
                    "tags": ["clips"],
                    "operationId": "deleteClip",
                    "summary": "Delete the clip and its stored audio",
                    "parameters": [CLIP_ID, IF_MATCH],
                    "responses": {
                        "204": {"description": "Deleted"},
                        "400": problem(400),
                        "404": problem(404),
                        "412": problem(412),
                        "503": problem(503),
                    },
                },
            },
            "/clips/{clip_id}/stats": {
                "get": {
                    "tags": ["clips"],
                    "operationId": "getClipStats",
                    "parameters": [CLIP_ID],
                    "responses": {
                        "200": {
                            "description": "The clip and its plays per day, last 30 days (UTC)",
                            "content": {"application/json": {"schema": REFS["ClipStats"]}},
                        },
                        "400": problem(400),
                        "404": problem(404),
                        "503": problem(503),
                    },
                }
            },
            STREAM_ROUTE: {
                "get": {
                    "tags": ["streams"],
                    "operationId": "streamClip",
                    "summary": "The clip's audio; Range and conditional requests supported",
                    "parameters": [CLIP_ID, VARIANT, *STREAM_REQUEST_HEADERS],
                    "responses": {
                        "200": {
                            "description": "The whole audio",
                            "content": {"audio/*": AUDIO},
                            "headers": AUDIO_HEADERS,
                        },
                        "206": {
                            "description": "The requested range",
                            "content": {"audio/*": AUDIO},
                            "headers": AUDIO_HEADERS,
                        },
                        "302": {"description": "STREAM_MODE=redirect: the remote audio_url"},
                        "304": {"description": "Not modified"},
                        "400": problem(400),
                        "404": problem(404),
                        "416": problem(416),
                        "500": problem(500),
                        "502": problem(502),
                        "503": problem(503),
                        "504": problem(504),
                    },
                }
            },
            "/clips/{clip_id}/peaks": {
                "get": {
                    "tags": ["clips"],
                    "operationId": "getClipPeaks",
                    "summary": "The clip's waveform, in audiowaveform's JSON format (version 2)",
                    "parameters": [CLIP_ID, *query_parameters(PeaksQuery)],
                    "responses": {
                        "200": {
                            "description": "Min/max pairs per pixel; ETag names the"
                            " computation and zoom (If-None-Match gets a 304)",
                            "headers": {"ETag": {"schema": {"type": "string"}}},
                            "content": {"application/json": {"schema": REFS["Peaks"]}},
                        },
                        "304": {"description": "Not modified"},
                        "400": problem(400),
                        "404": {
                            **problem(404),
                            "description": "No clip has that id, or its peaks are not computed"
                            " yet (Retry-After) or could not be (the detail says why)",
                        },
                        "503": problem(503),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "tags": ["health"],
                    "operationId": "healthz",
                    "responses": {"200": {"description": "The process is alive"}},
                }
            },
            "/readyz": {
                "get": {
                    "tags": ["health"],
                    "operationId": "readyz",
                    "responses": {
                        "200": {"description": "PostgreSQL answers and the schema is current"},
                        "503": problem(503),
                    },
                }
            },
        },
        "components": {
            "schemas": SCHEMAS,
        },
    }


def with_access_control(doc: dict) -> dict:
    """Every /clips operation needs a key when API_KEYS is set (streams also
    open with a signed URL), and answers 401/403 then."""
    doc["components"]["securitySchemes"] = {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "A key from API_KEYS or API_KEYS_FILE: `Authorization: Bearer <key>`",
        },
        "apiKey": {
            "type": "apiKey",
            "in": "header",
            "name": "X-API-Key",
            "description": "The same key in an `X-API-Key` header",
        },
    }
    for path, item in doc["paths"].items():
        if path.startswith("/clips"):
            for operation in item.values():
                operation["security"] = [{"bearer": []}, {"apiKey": []}, {}]
                operation["responses"].setdefault("401", problem(401))
                operation["responses"].setdefault("403", problem(403))
    return doc


def int64(node: object) -> object:
    """Ids as `format: int64` instead of `maximum: 2**63 - 1`: the same
    bound, in words a client generator maps to a 64-bit integer, and one a
    JavaScript reader cannot round (JSON.parse reads 9223372036854775807
    as 9223372036854775808, which Swagger UI shows as 9223372036854776000)."""
    if isinstance(node, dict):
        node = {key: int64(value) for key, value in node.items()}
        if node.get("type") == "integer" and node.get("maximum") == BIGINT_MAX:
            del node["maximum"]
            node["format"] = "int64"
        return node
    if isinstance(node, list):
        return [int64(value) for value in node]
    return node


DOCUMENT = int64(with_access_control(document()))


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return json_response(DOCUMENT)


@routes.get("/docs")
async def docs(request: web.Request) -> web.FileResponse:
    return web.FileResponse(
        DOCS_PAGE,
        headers={
            "Content-Type": "text/html; charset=utf-8",
            "Content-Security-Policy": DOCS_CSP,
            "Cache-Control": "no-cache",
        },
    )


@routes.get("/docs/{asset}")
async def docs_asset(request: web.Request) -> web.FileResponse:
    """The page's scripts and styles; revalidated (ETag) on each visit, so a
    new release is seen at once."""
    asset = DOCS_ASSETS.get(request.match_info["asset"])
    if asset is None:
        raise Problem(404, "No such file")
    path, content_type = asset
    return web.FileResponse(
        path, headers={"Content-Type": content_type, "Cache-Control": "no-cache"}
    )


@routes.get("/favicon.ico")
async def favicon(request: web.Request) -> web.Response:
    """No icon, said so browsers cache the answer instead of logging a 404
    on every visit."""
    return web.Response(status=204, headers={"Cache-Control": "public, max-age=86400"})
