"""Queries on the `clips` table (sql/clips.sql).

Rows come back as asyncpg records carrying every column of the table
(`clips.*`); schemas/clips.py says which of them a response shows.
"""

from datetime import datetime
from typing import Literal

from asyncpg import Connection, Pool, Record

from db import translated
from db.queries import SQL

Sort = Literal["newest", "popular", "title"]
Conn = Pool | Connection
# A clip as the table stores it: every column, by name.
Row = Record


@translated
async def get_clip(conn: Conn, clip_id: int) -> Row | None:
    return await conn.fetchrow(SQL["get_clip"], clip_id)


@translated
async def get_clip_stats(conn: Conn, clip_id: int) -> Row | None:
    return await conn.fetchrow(SQL["get_clip_stats"], clip_id)


def sort_key(sort: Sort, clip: Row) -> object:
    """The value a page in `sort` order is keyed on, as the query names it."""
    return clip[{"newest": "created_at", "popular": "play_count", "title": "title_key"}[sort]]


def like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


@translated
async def list_clips(
    conn: Conn,
    *,
    sort: Sort,
    genre: str | None,
    search: str | None,
    after: tuple[object, int] | None,
    limit: int,
) -> list[Row]:
    """A page of clips in `sort` order, strictly after the keyset `after`,
    of `genre` and with `search` in the title or description (literally:
    `%` and `_` are no wildcards), when given."""
    key, last_id = after if after else (None, None)
    pattern = f"%{like_escape(search)}%" if search else None
    return await conn.fetch(SQL[f"list_clips_{sort}"], genre, pattern, key, last_id, limit)


@translated
async def create_clip(
    conn: Conn,
    *,
    title: str,
    description: str,
    genre: str,
    duration_seconds: float,
    audio_url: str | None,
    media_path: str | None,
    content_type: str,
    size_bytes: int | None = None,
    sha256: str | None = None,
    bitrate: int | None = None,
    jobs: tuple[str, ...] = (),
) -> Row:
    """Insert a clip and queue `jobs` for it ("preview", "peaks"; db/jobs.py)
    in the same statement; returns its row."""
    return await conn.fetchrow(
        SQL["create_clip"],
        title,
        description,
        genre,
        duration_seconds,
        audio_url,
        media_path,
        content_type,
        size_bytes,
        sha256,
        bitrate,
        list(jobs),
    )


@translated
async def update_clip(
    conn: Conn, clip_id: int, version: datetime, changes: dict[str, object]
) -> Row | None:
    """Apply `changes` (title, description, genre, duration_seconds,
    audio_url, content_type) if the clip's version is still `version`."""
    fields = ("title", "description", "genre", "duration_seconds", "audio_url", "content_type")
    return await conn.fetchrow(
        SQL["update_clip"], clip_id, *(changes.get(f) for f in fields), version
    )


@translated
async def delete_clip(conn: Conn, clip_id: int, version: datetime) -> Row | None:
    """Delete the clip if its version is still `version`; returns its
    media_path (None for remote audio) and preview_path (None without a
    ready preview), or no row. Its jobs and peaks go with it."""
    return await conn.fetchrow(SQL["delete_clip"], clip_id, version)
