"""The API described as OpenAPI 3.1 at /openapi.json, and a docs page at /docs.

Request bodies come from the same pydantic models the handlers validate
with, so they cannot drift; tests/test_openapi.py fuzzes the real app
against the whole document with schemathesis.
"""

from pathlib import Path

from aiohttp import web

from handlers.clips import ClipChanges, NewClip, UploadForm
from handlers.responses import json_response

routes = web.RouteTableDef()

DOCS_PAGE = Path(__file__).with_name("docs.html")

PROBLEM = {"$ref": "#/components/responses/Problem"}
CLIP_ID = {
    "name": "clip_id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1},
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


def clip_schema() -> dict:
    return {
        "type": "object",
        "required": [
            "id",
            "title",
            "description",
            "genre",
            "duration_seconds",
            "audio_url",
            "content_type",
            "play_count",
            "last_played_at",
            "created_at",
            "stream_url",
        ],
        "properties": {
            "id": {"type": "integer", "minimum": 1},
            "title": {"type": "string", "minLength": 1, "maxLength": 200},
            "description": {"type": "string", "maxLength": 2000},
            "genre": {"type": "string", "pattern": "^[a-z0-9]+(-[a-z0-9]+)*$"},
            "duration_seconds": {"type": "number", "exclusiveMinimum": 0},
            "audio_url": {"type": ["string", "null"], "description": "null for stored audio"},
            "content_type": {"type": "string"},
            "play_count": {"type": "integer", "minimum": 0},
            "last_played_at": {"anyOf": [TIMESTAMP, {"type": "null"}]},
            "created_at": TIMESTAMP,
            "size_bytes": {"type": ["integer", "null"], "description": "uploaded audio only"},
            "sha256": {"type": ["string", "null"], "pattern": "^[0-9a-f]{64}$"},
            "bitrate": {"type": ["integer", "null"], "description": "bits per second"},
            "stream_url": {"type": "string", "format": "uri"},
        },
    }


def body_schema(model) -> dict:
    schema = model.model_json_schema()
    schema.pop("title", None)
    return schema


def upload_schema() -> dict:
    schema = body_schema(UploadForm)
    schema["properties"]["audio"] = {"type": "string", "format": "binary"}
    schema["required"] = [*schema.get("required", []), "audio"]
    return schema


CLIP_RESPONSE = {
    "description": "The clip; ETag is the version of its metadata",
    "headers": {"ETag": {"schema": {"type": "string"}}},
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Clip"}}},
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
                    "parameters": [
                        {"name": "genre", "in": "query", "schema": {"type": "string"}},
                        {"name": "q", "in": "query", "schema": {"type": "string"}},
                        {
                            "name": "sort",
                            "in": "query",
                            "schema": {"enum": ["newest", "popular", "title"]},
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 200},
                        },
                        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": {
                            "description": 'Clips; `Link: <…>; rel="next"` when more follow',
                            "headers": {"Link": {"schema": {"type": "string"}}},
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/Clip"},
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
                            "application/json": {"schema": body_schema(NewClip)},
                            "multipart/form-data": {"schema": upload_schema()},
                        },
                    },
                    "responses": {
                        "201": {
                            "description": "Created",
                            "headers": {"Location": {"schema": {"type": "string"}}},
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/Clip"}
                                }
                            },
                        },
                        "400": PROBLEM,
                        "413": PROBLEM,
                        "415": PROBLEM,
                        "422": PROBLEM,
                        "503": PROBLEM,
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
                        "content": {"application/json": {"schema": body_schema(ClipChanges)}},
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
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/ClipStats"}
                                }
                            },
                        },
                        "400": PROBLEM,
                        "404": PROBLEM,
                        "503": PROBLEM,
                    },
                }
            },
            "/clips/{clip_id}/stream": {
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
            "schemas": {
                "Clip": clip_schema(),
                "ClipStats": {
                    "allOf": [
                        {"$ref": "#/components/schemas/Clip"},
                        {
                            "type": "object",
                            "required": ["plays_by_day"],
                            "properties": {
                                "plays_by_day": {
                                    "type": "array",
                                    "minItems": 30,
                                    "maxItems": 30,
                                    "items": {
                                        "type": "object",
                                        "required": ["date", "plays"],
                                        "properties": {
                                            "date": {"type": "string", "format": "date"},
                                            "plays": {"type": "integer", "minimum": 0},
                                        },
                                    },
                                }
                            },
                        },
                    ]
                },
                "Problem": {
                    "type": "object",
                    "required": ["type", "title", "status"],
                    "properties": {
                        "type": {"type": "string"},
                        "title": {"type": "string"},
                        "status": {"type": "integer"},
                        "detail": {"type": "string"},
                        "request_id": {"type": "string"},
                        "errors": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["field", "reason"],
                                "properties": {
                                    "field": {"type": "string"},
                                    "reason": {"type": "string"},
                                },
                            },
                        },
                    },
                },
            },
            "responses": {
                "Problem": {
                    "description": "An RFC 9457 problem",
                    "content": {
                        "application/problem+json": {
                            "schema": {"$ref": "#/components/schemas/Problem"}
                        }
                    },
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
    return web.FileResponse(DOCS_PAGE, headers={"Content-Type": "text/html; charset=utf-8"})
