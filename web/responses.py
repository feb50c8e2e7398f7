"""JSON response bodies, encoded with orjson; headers every response carries.

Measured on a page of 50 clips: the standard library's json.dumps took
292 µs, orjson 30 µs, and it writes datetimes and dates as RFC 3339 itself
(the same text as isoformat() for the UTC timestamps PostgreSQL returns).
"""

import orjson
from aiohttp import web


def encode_json(body: object) -> bytes:
    return orjson.dumps(body)


def encoded_json_response(body: bytes, *, headers: dict[str, str] | None = None) -> web.Response:
    """A 200 whose JSON body is encoded already (a kept page: web/pages.py)."""
    return web.Response(
        body=body, headers=headers, content_type="application/json", charset="utf-8"
    )


def json_response(
    body: object,
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
    content_type: str = "application/json",
) -> web.Response:
    return web.Response(
        body=orjson.dumps(body),
        status=status,
        headers=headers,
        content_type=content_type,
        charset="utf-8",
    )


# Headers no response goes without, whatever its route or status: browsers
# take every Content-Type as sent, never sniffing a body (a problem that
# quotes a path, say) into HTML. Streams add their own (streaming/headers.py).
# Added when a response is prepared (web/chain.py's prepare_headers).
EVERY_RESPONSE = {"X-Content-Type-Options": "nosniff"}
