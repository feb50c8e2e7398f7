"""Every error is an RFC 9457 problem a client can read, and changes nothing."""

import base64
import json
import logging

import pytest
import yarl

from db import POOL
from db.clips import get_clip
from tests.support import MP3, clip_count, error_fields, raw_form, read_problem, send_slowly


def cursor(*parts) -> str:
    raw = json.dumps(list(parts)).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


BAD_IDS = [
    "/clips/abc",
    "/clips/abc/stats",
    "/clips/0",
    "/clips/-1/stats",
    "/clips/1.5",
    "/clips/%EF%BC%91",  # a fullwidth digit one
    "/clips/9223372036854775808",  # one past the largest bigint
    "/clips/9223372036854775808/stats",
    "/clips/99999999999999999999999999",
]


async def test_a_bad_clip_id_is_400(client, subtests):
    for path in BAD_IDS:
        with subtests.test(path=path):
            body = await read_problem(await client.get(path), 400)
            assert error_fields(body) == ["clip_id"]


async def test_the_largest_bigint_is_a_valid_id_that_no_clip_has(client):
    await read_problem(await client.get("/clips/9223372036854775807"), 404)
    await read_problem(await client.get("/clips/9223372036854775807/stats"), 404)


BAD_LIST_PARAMETERS = [
    ("limit=0", "limit"),
    ("limit=201", "limit"),
    ("limit=100000", "limit"),
    ("limit=-1", "limit"),
    ("limit=ten", "limit"),
    ("sort=bogus", "sort"),
    ("sort=NEWEST", "sort"),
    ("genre=Rock%20Music", "genre"),
    ("q=" + "x" * 201, "q"),
    ("q=a%00b", "q"),
    ("cursor=garbage", "cursor"),
    ("cursor=" + "A" * 1001, "cursor"),
]


async def test_empty_list_parameters_count_as_absent(client, make_clip):
    """An HTML form sends `q=` for an empty search box: that is no filter."""
    await make_clip(audio_url="https://cdn.example.invalid/a.mp3")
    plain = await (await client.get("/clips")).json()
    empty = await client.get("/clips?q=&genre=&limit=&sort=&cursor=")
    assert empty.status == 200
    assert await empty.json() == plain


async def test_bad_list_parameters_are_400_naming_the_parameter(client, subtests):
    for query, field in BAD_LIST_PARAMETERS:
        with subtests.test(query=query[:40]):
            body = await read_problem(await client.get(f"/clips?{query}"), 400)
            assert error_fields(body) == [field]


TAMPERED_CURSORS = [
    ("newest", cursor("popular", 3, 1)),  # a real cursor of another sort
    ("popular", cursor("newest", "2026-01-01T00:00:00+00:00", 1)),
    ("title", cursor("newest", "2026-01-01T00:00:00+00:00", 1)),
    ("newest", cursor("newest", "yesterday", 1)),
    ("newest", cursor("newest", "2026-01-01T00:00:00", 1)),  # no time zone
    ("newest", cursor("newest", "0001-01-01T00:00:00+05:00", 1)),  # before year 1 in UTC
    ("newest", cursor("newest", "2026-01-01T00:00:00+00:00", 0)),
    ("newest", cursor("newest", "2026-01-01T00:00:00+00:00", 2**63)),
    ("newest", cursor("newest", "2026-01-01T00:00:00+00:00", "1")),
    ("popular", cursor("popular", -1, 1)),
    ("popular", cursor("popular", True, 1)),
    ("popular", cursor("popular", 2**63, 1)),
    ("title", cursor("title", 7, 1)),
    ("title", cursor("title", "nul\u0000", 1)),
    ("title", base64.urlsafe_b64encode(b'["title","\\ud800",1]').decode()),
    ("title", cursor("title", "a")),
    ("title", base64.urlsafe_b64encode(b"\xff\xfe").decode()),
]


async def test_a_tampered_cursor_is_400(client, subtests):
    for sort, tampered in TAMPERED_CURSORS:
        with subtests.test(sort=sort, cursor=tampered):
            response = await client.get("/clips", params={"sort": sort, "cursor": tampered})
            body = await read_problem(response, 400)
            assert error_fields(body) == ["cursor"]


async def test_a_cursor_is_only_good_for_the_sort_that_gave_it(client, make_clip):
    for n in range(3):
        await make_clip(title=f"Clip {n}", audio_url="http://127.0.0.1/a.mp3")
    first = await client.get("/clips", params={"sort": "popular", "limit": "1"})
    given = yarl.URL(first.headers["Link"].split(">")[0].lstrip("<")).query["cursor"]
    assert (await client.get("/clips", params={"sort": "popular", "cursor": given})).status == 200
    await read_problem(await client.get("/clips", params={"sort": "title", "cursor": given}), 400)


async def test_an_unknown_route_is_a_404_problem(client, subtests):
    for path in ["/nope", "/clips/1/nope", "/clip", "/clips/1/stats/x"]:
        with subtests.test(path=path):
            body = await read_problem(await client.get(path), 404)
            assert path in body["detail"]


WRONG_METHODS = [
    ("PUT", "/clips", {"GET", "HEAD", "POST"}),
    ("DELETE", "/clips", {"GET", "HEAD", "POST"}),
    ("POST", "/clips/1/stats", {"GET", "HEAD"}),
    ("POST", "/healthz", {"GET", "HEAD"}),
]


async def test_a_wrong_method_is_405_with_allow(client, pool, subtests):
    for method, path, allowed in WRONG_METHODS:
        with subtests.test(method=method, path=path):
            response = await client.request(method, path, json={"title": "x"})
            await read_problem(response, 405)
            assert set(response.headers["Allow"].split(",")) == allowed
    assert await clip_count(pool) == 0


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_body_not_in_its_content_encoding_is_400_naming_the_body(
    client, pool, caplog, encoding
):
    """aiohttp decodes a body as its Content-Encoding says; one that is not
    in it fails as it is read, by a JSON or an upload reader alike: the
    client's fault, logged as no fault of ours, and the connection closes
    (aiohttp's parser reads nothing more on it)."""
    caplog.set_level(logging.WARNING)
    encoded = {"Content-Encoding": encoding}
    as_json = await client.post(
        "/clips",
        data=json.dumps({"title": "x", "genre": "rock"}).encode(),
        headers={**encoded, "Content-Type": "application/json"},
    )
    form, tail = raw_form("plain")
    as_upload = await client.post(
        "/clips",
        data=form + MP3 + tail,
        headers={**encoded, "Content-Type": "multipart/form-data; boundary=plain"},
    )
    for response in (as_json, as_upload):
        detail = (await read_problem(response, 400))["detail"]
        assert detail.startswith("The request body cannot be read"), detail
        assert encoding in detail
        assert response.headers["Connection"] == "close"
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert await clip_count(pool) == 0
    assert (await client.get("/clips")).status == 200


@pytest.mark.parametrize("trickle", [None, 0.05], ids=["stalled", "trickling"])
@pytest.mark.parametrize("method", ["POST", "PATCH"])
async def test_a_json_body_that_stalls_or_trickles_is_cut_with_408(
    settings, make_client, make_clip, method, trickle
):
    """A JSON body (64 KiB at most) must arrive within UPLOAD_IDLE_SECONDS
    in all: one that sends nothing more is cut, and so is one that sends a
    byte far more often than that."""
    client = await make_client(settings.changed({"upload_idle_seconds": 0.5}))
    pool = client.server.app[POOL]
    clip_id = await make_clip(title="Before", audio_url="http://127.0.0.1/a.mp3")
    path = "/clips" if method == "POST" else f"/clips/{clip_id}"
    body = json.dumps({"title": "After", "genre": "rock", "duration_seconds": 1.0}).encode()
    body += b" " * 2000
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    status, rest = await send_slowly(client, head, body, first=10, trickle=trickle)
    assert status == 408
    assert b"UPLOAD_IDLE_SECONDS" in rest
    assert await clip_count(pool) == 1
    assert (await get_clip(pool, clip_id))["title"] == "Before"
