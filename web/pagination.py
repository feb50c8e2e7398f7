"""Keyset pagination: opaque cursors and the RFC 8288 `Link: rel="next"`.

A cursor is `[sort, key, id]` as URL-safe base64 JSON: the position of the
last row of a page in one sort order. Its key's type depends on the order:
a timezone-aware timestamp ("newest"), a play count ("popular") or a
lowered title ("title").
"""

import base64
import binascii
import json
from datetime import UTC, datetime

import yarl

from schemas.fields import BIGINT_MAX, storable
from web.problems import Problem


def encode_cursor(sort: str, key: object, row_id: int) -> str:
    if isinstance(key, datetime):
        key = key.isoformat()
    raw = json.dumps([sort, key, row_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(sort: str, cursor: str) -> tuple[object, int]:
    """The keyset (sort key, id) a cursor carries, or a 400 naming `cursor`."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        cursor_sort, key, row_id = json.loads(raw)
        if cursor_sort != sort:
            raise ValueError("made for another sort order")
        if type(row_id) is not int or not 1 <= row_id <= BIGINT_MAX:
            raise ValueError("bad id")
        if sort == "newest":
            key = datetime.fromisoformat(key)
            if key.tzinfo is None:
                raise ValueError("naive timestamp")
            key = key.astimezone(UTC)  # asyncpg would overflow on year 1 at +05:00
        elif sort == "popular" and (type(key) is not int or not 0 <= key <= BIGINT_MAX):
            raise ValueError("bad play count")
        elif sort == "title":
            if type(key) is not str:
                raise ValueError("bad title")
            storable(key).encode()  # no NUL, no lone surrogate from a "\\ud800" escape
        return key, row_id
    except (ValueError, TypeError, OverflowError, binascii.Error):
        raise Problem(
            400,
            "cursor is not one this listing gave out; start again without it",
            errors=[{"field": "cursor", "reason": f"invalid for sort={sort}"}],
        ) from None


def next_link(url: str, query: dict[str, str], cursor: str) -> str:
    """The Link header value pointing at the page after this one."""
    next_url = yarl.URL(url).with_query({**query, "cursor": cursor})
    return f'<{next_url}>; rel="next"'
