"""The API described as OpenAPI 3.1 at /openapi.json, and a docs page at /docs.

Only the paths and their responses are written here. Every schema (a clip,
its stats, request bodies, query parameters, the problem body) is generated
by pydantic from the definitions the handlers validate and render with
(schemas/), so the document cannot drift from the responses;
tests/test_openapi.py fuzzes the real app against it with schemathesis.
"""

import base64
import hashlib
import re
from pathlib import Path

from aiohttp import web
from pydantic import BaseModel, TypeAdapter

from schemas.clips import Clip, ClipChanges, ClipStats, ListQuery, NewClip, UploadForm
from schemas.fields import BIGINT_MAX
from schemas.problems import Problem
from web.auth import STREAM_ROUTE
from web.responses import json_response

routes = web.RouteTableDef()

DOCS_PAGE = Path(__file__).with_name("docs.html")


def content_security_policy(page: str) -> str:
    """A CSP that lets the docs page run only its own inline script and
    style (by hash) and fetch only /openapi.json's origin: nothing injected
    into it could run, load or post anything."""

    def hashes(tag: str) -> str:
        bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.DOTALL)
        digests = (base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() for b in bodies)
        return " ".join(f"'sha256-{digest}'" for digest in digests) or "'none'"

    return "; ".join(
        [
            "default-src 'none'",
            f"script-src {hashes('script')}",
            f"style-src {hashes('style')}",
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )


DOCS_CSP = content_security_policy(DOCS_PAGE.read_text(encoding="utf-8"))

# Response shapes are documented as they are sent, request shapes as they
# are validated.
SHAPES = {
    "Clip": ("serialization", Clip),
    "ClipStats": ("serialization", ClipStats),
    "NewClip": ("validation", NewClip),
    "ClipChanges": ("validation", ClipChanges),
    "Problem": ("serialization", Problem),
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


PROBLEM = {"$ref": "#/components/responses/Problem"}
CLIP_ID = {
    "name": "clip_id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 1, "maximum": BIGINT_MAX},
}
TIMESTAMP = {"type": "string", "format": "date-time"}
AUDIO = {"schema": {"type": "string", "format": "binary"}}
AUDIO_HEADERS = {
    name: {"schema": {"type": "string"}}
    for name in ("Content-Range", "Accept-Ranges", "ETag", "Last-Modified")
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
        "paths": {
            "/clips": {
                "get": {
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
                        "400": PROBLEM,
                        "503": PROBLEM,
                    },
                },
                "post": {
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
                        "400": PROBLEM,
                        "408": PROBLEM,
                        "413": PROBLEM,
                        "415": PROBLEM,
                        "422": PROBLEM,
                        "500": PROBLEM,
                        "503": PROBLEM,
                        "507": PROBLEM,
                    },
                },
            },
            "/clips/{clip_id}": {
                "get": {
                    "operationId": "getClip",
                    "parameters": [CLIP_ID],
                    "responses": {
                        "200": CLIP_RESPONSE,
                        "400": PROBLEM,
                        "404": PROBLEM,
                        "503": PROBLEM,
                    },
                },
                "patch": {
                    "operationId": "updateClip",
                    "summary": "Change some fields; If-Match with the ETag guards lost updates",
                    "parameters": [CLIP_ID, IF_MATCH],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": REFS["ClipChanges"]}},
                    },
                    "responses": {
                        "200": CLIP_RESPONSE,
                        "400": PROBLEM,
                        "404": PROBLEM,
                        "412": PROBLEM,
                        "413": PROBLEM,
                        "415": PROBLEM,
                        "503": PROBLEM,
                    },
                },
                "delete": {
                    "operationId": "deleteClip",
                    "summary": "Delete the clip and its stored audio",
                    "parameters": [CLIP_ID, IF_MATCH],
                    "responses": {
                        "204": {"description": "Deleted"},
                        "400": PROBLEM,
                        "404": PROBLEM,
                        "412": PROBLEM,
                        "503": PROBLEM,
                    },
                },
            },
            "/clips/{clip_id}/stats": {
                "get": {
                    "operationId": "getClipStats",
                    "parameters": [CLIP_ID],
                    "responses": {
                        "200": {
                            "description": "The clip and its plays per day, last 30 days (UTC)",
                            "content": {"application/json": {"schema": REFS["ClipStats"]}},
                        },
                        "400": PROBLEM,
                        "404": PROBLEM,
                        "503": PROBLEM,
                    },
                }
            },
            STREAM_ROUTE: {
                "get": {
                    "operationId": "streamClip",
                    "summary": "The clip's audio; Range and conditional requests supported",
                    "parameters": [CLIP_ID, *STREAM_REQUEST_HEADERS],
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
                        "400": PROBLEM,
                        "404": PROBLEM,
                        "416": PROBLEM,
                        "500": PROBLEM,
                        "502": PROBLEM,
                        "503": PROBLEM,
                        "504": PROBLEM,
                    },
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "responses": {"200": {"description": "The process is alive"}},
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "responses": {
                        "200": {"description": "PostgreSQL answers and the schema is current"},
                        "503": PROBLEM,
                    },
                }
            },
        },
        "components": {
            "schemas": SCHEMAS,
            "responses": {
                "Problem": {
                    "description": "An RFC 9457 problem",
                    "content": {"application/problem+json": {"schema": REFS["Problem"]}},
                }
            },
        },
    }


def with_access_control(doc: dict) -> dict:
    """Every /clips operation needs a key when API_KEYS is set (streams also
    open with a signed URL), and answers 401/403 then."""
    doc["components"]["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer"},
        "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    }
    for path, item in doc["paths"].items():
        if path.startswith("/clips"):
            for operation in item.values():
                operation["security"] = [{"bearer": []}, {"apiKey": []}, {}]
                operation["responses"].setdefault("401", PROBLEM)
                operation["responses"].setdefault("403", PROBLEM)
    return doc


DOCUMENT = with_access_control(document())


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return json_response(DOCUMENT)


@routes.get("/docs")
async def docs(request: web.Request) -> web.FileResponse:
    return web.FileResponse(
        DOCS_PAGE,
        headers={"Content-Type": "text/html; charset=utf-8", "Content-Security-Policy": DOCS_CSP},
    )
