"""The SQL loader refuses broken files at start-up, naming file and line; every
clip query returns what a clip response shows."""

import pytest

from db.queries import SQL, Queries, QueryError
from schemas.clips import COLUMNS


def load(tmp_path, text: str) -> Queries:
    (tmp_path / "q.sql").write_text(text)
    return Queries.load(tmp_path)


def test_every_query_the_code_uses_is_loaded():
    assert {"get_clip", "count_plays", "list_clips_newest", "get_clip_stats"} <= set(SQL)


def test_queries_are_split_at_their_headers(tmp_path):
    queries = load(tmp_path, "-- name: one\n-- a comment\nSELECT 1;\n\n-- name: two\nSELECT 2;\n")
    assert dict(queries) == {"one": "SELECT 1;", "two": "SELECT 2;"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "-- name: one\n-- only a comment\n\n-- name: two\nSELECT 2;\n",
            "q.sql:1: query 'one' is empty",
        ),
        (
            "-- name: one\nSELECT 1;\n-- name: one\nSELECT 2;\n",
            "q.sql:3: query 'one' already defined",
        ),
        ("SELECT 0;\n-- name: one\nSELECT 1;\n", "q.sql:1: SQL before the first"),
        ("-- name: Bad-Name\nSELECT 1;\n", "'Bad-Name' is not a valid query name"),
    ],
)
def test_broken_files_fail_naming_file_and_line(tmp_path, text, message):
    with pytest.raises(QueryError, match=message):
        load(tmp_path, text)


CLIP_QUERIES = (
    "get_clip",
    "list_clips_newest",
    "list_clips_popular",
    "list_clips_title",
    "create_clip",
    "update_clip",
    "get_clip_stats",
)


async def test_every_clip_query_returns_every_field_a_clip_shows(pool):
    """Rendering copies schemas.clips.COLUMNS from rows: a query that lost
    one would break every response it feeds, so each is checked here
    (prepared, not run), with the columns PostgreSQL says it returns."""
    async with pool.acquire() as conn:
        for name in CLIP_QUERIES:
            statement = await conn.prepare(SQL[name])
            returned = [attribute.name for attribute in statement.get_attributes()]
            missing = set(COLUMNS) - set(returned)
            assert not missing, f"{name} does not return {sorted(missing)}"
