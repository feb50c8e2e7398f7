"""The clip catalogue as a client sees it: list, show, stats, create, edit, delete."""

import asyncio
import json
import re
from datetime import UTC, date, datetime, timedelta

import pytest
import yarl

from tests.support import (
    MP3,
    clip_count,
    error_fields,
    read_problem,
    upload_form,
)

CLIP_FIELDS = {
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
    # Facts about uploaded audio (null for remote clips), added with uploads.
    "size_bytes",
    "sha256",
    "bitrate",
    # The preview stream_url plays (null for remote audio) and the waveform.
    "preview",
    "peaks_url",
}
LINK_NEXT = re.compile(r'^<([^>]+)>; rel="next"$')


def next_link(response) -> str | None:
    """The path and query of the Link rel="next" target, or None."""
    header = response.headers.get("Link")
    if header is None:
        return None
    match = LINK_NEXT.match(header)
    assert match, header
    return yarl.URL(match[1]).path_qs


async def list_ids(client, path: str = "/clips", **params) -> list[int]:
    response = await client.get(path, params=params)
    assert response.status == 200, await response.text()
    return [clip["id"] for clip in await response.json()]


@pytest.fixture
def audio_url(origin) -> str:
    return str(origin.make_url("/audio/tune.wav"))


@pytest.fixture
def remote(make_clip, audio_url):
    """make_clip for a clip whose audio is at the test origin."""

    async def make(**fields) -> int:
        return await make_clip(**{"audio_url": audio_url, **fields})

    return make


# --- GET /clips ---------------------------------------------------------------


async def test_an_empty_catalogue_is_an_empty_array(client):
    response = await client.get("/clips")
    assert response.status == 200
    assert response.content_type == "application/json"
    assert await response.json() == []
    assert "Link" not in response.headers


async def test_the_list_is_an_array_of_clips_with_or_without_trailing_slash(client, remote):
    ids = [await remote(title=f"Clip {n}") for n in range(3)]
    plain = await client.get("/clips")
    slashed = await client.get("/clips/")
    assert plain.status == slashed.status == 200
    body = await plain.json()
    assert body == await slashed.json()
    assert isinstance(body, list)
    assert sorted(clip["id"] for clip in body) == sorted(ids)
    assert all(set(clip) == CLIP_FIELDS for clip in body)


async def test_genre_filter_is_exact(client, remote):
    rock = await remote(genre="rock")
    await remote(genre="rock-n-roll")
    await remote(genre="hard-rock")
    await remote(genre="jazz")
    assert await list_ids(client, genre="rock") == [rock]
    assert await list_ids(client, genre="blues") == []


async def test_search_is_case_insensitive_on_title_and_description(client, remote):
    in_title = await remote(title="Midnight Rain")
    in_description = await remote(title="Untitled", description="recorded in the RAIN at dusk")
    accented = await remote(title="ÉTÉ INDIEN")
    await remote(title="Sunny day", description="dry")
    assert sorted(await list_ids(client, q="rain")) == sorted([in_title, in_description])
    assert sorted(await list_ids(client, q="RaIn")) == sorted([in_title, in_description])
    assert await list_ids(client, q="été") == [accented]


async def test_search_wildcards_are_literal(client, remote, subtests):
    percent = await remote(title="100% pure")
    underscore = await remote(title="a_b side")
    backslash = await remote(title="back\\slash")
    await remote(title="1000 pure")  # would match 100% as a LIKE pattern
    await remote(title="axb side")  # would match a_b
    await remote(title="backslash")  # would match back\slash with \ as escape
    for q, wanted in (("100%", percent), ("a_b", underscore), ("back\\slash", backslash)):
        with subtests.test(q=q):
            assert await list_ids(client, q=q) == [wanted]


async def test_search_combines_with_genre(client, remote):
    wanted = await remote(title="Blue Rain", genre="jazz")
    await remote(title="Red Rain", genre="rock")
    assert await list_ids(client, q="rain", genre="jazz") == [wanted]


async def test_newest_sort_lists_the_latest_clip_first(client, remote):
    ids = [await remote(title=f"Clip {n}") for n in range(4)]
    assert await list_ids(client) == ids[::-1]  # newest is the default
    assert await list_ids(client, sort="newest") == ids[::-1]
    body = await (await client.get("/clips")).json()
    created = [datetime.fromisoformat(clip["created_at"]) for clip in body]
    assert created == sorted(created, reverse=True)


async def test_popular_sort_lists_the_most_played_first(client, remote, plays):
    quiet, loud, middling, also_quiet = [await remote(title=f"Clip {n}") for n in range(4)]
    for clip_id, times in ((loud, 5), (middling, 2), (quiet, 0), (also_quiet, 0)):
        for _ in range(times):
            plays.record(clip_id)
    await plays.flush()
    response = await client.get("/clips", params={"sort": "popular"})
    body = await response.json()
    assert [clip["id"] for clip in body] == [loud, middling, also_quiet, quiet]  # ties: newer first
    assert [clip["play_count"] for clip in body] == [5, 2, 0, 0]


async def test_title_sort_is_alphabetical(client, remote):
    charlie = await remote(title="charlie")
    alpha = await remote(title="alpha")
    bravo_2 = await remote(title="bravo")
    bravo_1 = await remote(title="bravo")
    assert await list_ids(client, sort="title") == [alpha, bravo_2, bravo_1, charlie]


async def test_limit_defaults_to_50_and_accepts_1_to_200(client, pool):
    await pool.execute(
        "INSERT INTO clips (title, genre, duration_seconds, audio_url, content_type)"
        " SELECT 'Clip ' || n, 'rock', 10, 'http://127.0.0.1/a.mp3', 'audio/mpeg'"
        " FROM generate_series(1, 205) AS n"
    )
    assert len(await list_ids(client)) == 50
    assert len(await list_ids(client, limit="1")) == 1
    assert len(await list_ids(client, limit="200")) == 200


async def test_link_next_appears_only_when_more_clips_exist(client, remote):
    ids = [await remote(title=f"Clip {n}", genre="ambient") for n in range(3)]
    await remote(genre="rock")

    exact = await client.get("/clips", params={"genre": "ambient", "limit": "3"})
    assert [c["id"] for c in await exact.json()] == ids[::-1]
    assert "Link" not in exact.headers

    first = await client.get("/clips", params={"genre": "ambient", "limit": "2"})
    assert [c["id"] for c in await first.json()] == [ids[2], ids[1]]
    target = next_link(first)
    assert target is not None
    assert yarl.URL(target).query["genre"] == "ambient"  # the filter carries over
    second = await client.get(target)
    assert second.status == 200
    assert [c["id"] for c in await second.json()] == [ids[0]]
    assert next_link(second) is None


async def walk(client, sort: str, limit: int, meanwhile) -> list[int]:
    """Every id of the listing, page by page, each page fetched while
    meanwhile() runs."""
    seen = []
    target = f"/clips?sort={sort}&limit={limit}"
    while target is not None:
        response, _ = await asyncio.gather(client.get(target), meanwhile())
        assert response.status == 200, await response.text()
        seen += [clip["id"] for clip in await response.json()]
        target = next_link(response)
    return seen


@pytest.mark.parametrize("sort", ["newest", "popular", "title"])
async def test_walking_all_pages_while_clips_are_added_skips_and_repeats_nothing(
    client, pool, plays, audio_url, sort
):
    # 120 clips with many ties on every sort key, so the id tie-break matters.
    await pool.execute(
        "INSERT INTO clips (title, genre, duration_seconds, audio_url, content_type, created_at)"
        " SELECT 'Song ' || chr(65 + n % 26), 'rock', 10, $1, 'audio/mpeg',"
        "        now() - (n % 9) * interval '1 minute'"
        " FROM generate_series(1, 120) AS n",
        audio_url,
    )
    rows = await pool.fetch("SELECT id FROM clips ORDER BY id")
    for row in rows[::3]:
        for _ in range(row["id"] % 4):
            plays.record(row["id"])
    await plays.flush()
    before = await list_ids(client, sort=sort, limit="200")
    assert len(before) == 120

    added = []
    letters = iter("MZAQBYCX" * 10)

    async def add_clips() -> None:
        # Another client creates clips while each page is read: they sort
        # before, after and among the ones already seen.
        for _ in range(2):
            response = await client.post(
                "/clips",
                json={
                    "title": f"Song {next(letters)} new",
                    "genre": "rock",
                    "duration_seconds": 10,
                    "audio_url": audio_url,
                },
            )
            assert response.status == 201
            added.append((await response.json())["id"])

    seen = await walk(client, sort, 7, add_clips)

    assert len(seen) == len(set(seen)), "a clip was listed twice"
    assert set(before) <= set(seen), "a clip that existed before the walk was skipped"
    assert [i for i in seen if i in set(before)] == before  # same order as one big page
    assert added and set(seen) <= set(before) | set(added)


# --- GET /clips/{id} -------------------------------------------------------------


async def test_show_returns_every_field_of_the_clip(client, remote, audio_url):
    clip_id = await remote(
        title="Night Walk",
        description="City sounds",
        genre="field-recording",
        duration_seconds=42.5,
    )
    response = await client.get(f"/clips/{clip_id}")
    assert response.status == 200
    body = await response.json()
    assert set(body) == CLIP_FIELDS
    created_at = datetime.fromisoformat(body.pop("created_at"))
    assert created_at.tzinfo is not None
    assert abs(datetime.now(UTC) - created_at) < timedelta(minutes=1)
    assert body == {
        "id": clip_id,
        "title": "Night Walk",
        "description": "City sounds",
        "genre": "field-recording",
        "duration_seconds": 42.5,
        "audio_url": audio_url,
        "content_type": "audio/mpeg",
        "play_count": 0,
        "last_played_at": None,
        "size_bytes": None,
        "sha256": None,
        "bitrate": None,
        "stream_url": str(client.make_url(f"/clips/{clip_id}/stream")),
        "preview": None,
        "peaks_url": str(client.make_url(f"/clips/{clip_id}/peaks")),
    }


async def test_show_unknown_clip_is_a_404_problem(client):
    body = await read_problem(await client.get("/clips/424242"), 404)
    assert "424242" in body["detail"]


# --- GET /clips/{id}/stats -------------------------------------------------------


def utc_today() -> date:
    return datetime.now(UTC).date()


async def test_stats_of_a_new_clip_have_30_days_of_zeros_ending_today(client, remote):
    clip_id = await remote(title="Fresh")
    today = utc_today()
    response = await client.get(f"/clips/{clip_id}/stats")
    assert response.status == 200
    body = await response.json()
    assert body["id"] == clip_id
    assert body["title"] == "Fresh"
    assert body["play_count"] == 0
    assert body["last_played_at"] is None
    days = body["plays_by_day"]
    assert len(days) == 30
    assert [d["date"] for d in days] == [
        (today - timedelta(days=29 - n)).isoformat() for n in range(30)
    ]
    assert [d["plays"] for d in days] == [0] * 30


async def test_stats_count_plays_today(client, remote, plays):
    clip_id = await remote(title="Played")
    other = await remote(title="Not this one")
    for _ in range(3):
        plays.record(clip_id)
    plays.record(other)
    await plays.flush()

    body = await (await client.get(f"/clips/{clip_id}/stats")).json()
    assert body["play_count"] == 3
    last_played = datetime.fromisoformat(body["last_played_at"])
    assert abs(datetime.now(UTC) - last_played) < timedelta(minutes=1)
    days = body["plays_by_day"]
    assert days[-1] == {"date": utc_today().isoformat(), "plays": 3}
    assert sum(d["plays"] for d in days) == 3
    assert (await (await client.get(f"/clips/{clip_id}")).json())["play_count"] == 3


async def test_stats_of_an_unknown_clip_is_a_404_problem(client):
    body = await read_problem(await client.get("/clips/99999/stats"), 404)
    assert "99999" in body["detail"]


# --- POST /clips -----------------------------------------------------------------


@pytest.fixture
def new_clip(audio_url) -> dict:
    return {
        "title": "Morning Birds",
        "description": "Recorded at dawn",
        "genre": "field-recording",
        "duration_seconds": 20,
        "audio_url": audio_url,
    }


async def test_create_answers_201_with_the_clip_and_its_location(client, new_clip, audio_url):
    response = await client.post("/clips", json=new_clip)
    assert response.status == 201
    created = await response.json()
    assert set(created) == CLIP_FIELDS
    assert created["title"] == "Morning Birds"
    assert created["description"] == "Recorded at dawn"
    assert created["genre"] == "field-recording"
    assert created["duration_seconds"] == 20.0
    assert created["audio_url"] == audio_url
    assert created["content_type"] in ("audio/wav", "audio/x-wav")  # guessed from the URL
    assert created["play_count"] == 0

    location = response.headers["Location"]
    assert yarl.URL(location).path == f"/clips/{created['id']}"
    shown = await client.get(yarl.URL(location).path)
    assert shown.status == 200
    assert await shown.json() == created
    assert created["id"] in await list_ids(client)


async def test_create_with_trailing_slash_and_explicit_content_type(client, new_clip):
    response = await client.post("/clips/", json={**new_clip, "content_type": "audio/ogg"})
    assert response.status == 201
    assert (await response.json())["content_type"] == "audio/ogg"


async def test_create_trims_titles_and_normalises_the_url_scheme(client, new_clip, origin):
    url = str(origin.make_url("/audio/tune.wav"))
    response = await client.post(
        "/clips",
        json={**new_clip, "title": "  Spaced  ", "audio_url": "  HTTP" + url[len("http") :] + " "},
    )
    assert response.status == 201, await response.text()
    body = await response.json()
    assert body["title"] == "Spaced"
    assert body["audio_url"] == url


INVALID_FIELDS = [
    ({"title": None}, {"title"}),
    ({"title": "   "}, {"title"}),
    ({"title": "x" * 201}, {"title"}),
    ({"title": "nul\u0000byte"}, {"title"}),
    ({"description": "x" * 2001}, {"description"}),
    ({"genre": "Rock Music"}, {"genre"}),
    ({"genre": "rock--pop"}, {"genre"}),
    ({"duration_seconds": 0}, {"duration_seconds"}),
    ({"duration_seconds": -3}, {"duration_seconds"}),
    ({"duration_seconds": "20"}, {"duration_seconds"}),
    ({"duration_seconds": True}, {"duration_seconds"}),
    ({"duration_seconds": 86401}, {"duration_seconds"}),
    ({"plays": 3}, {"plays"}),
    ({"content_type": "video/mp4"}, {"content_type"}),
    ({"audio_url": "ftp://127.0.0.1/x.mp3"}, {"audio_url"}),
    ({"audio_url": "not a url"}, {"audio_url"}),
    ({"audio_url": "http:/127.0.0.1/x.mp3"}, {"audio_url"}),
    ({"audio_url": "http://user:secret@127.0.0.1/x.mp3"}, {"audio_url"}),
    ({"audio_url": "http://10.0.0.1/x.mp3"}, {"audio_url"}),
    ({"audio_url": "http://169.254.169.254/"}, {"audio_url"}),
    ({"audio_url": "http://[::1]/x.mp3"}, {"audio_url"}),
    (
        {"title": None, "genre": "Bad", "duration_seconds": 0},
        {"title", "genre", "duration_seconds"},
    ),
]


async def test_create_refuses_invalid_fields_naming_each(client, pool, remote, new_clip, subtests):
    await remote()
    for change, fields in INVALID_FIELDS:
        with subtests.test(change={k: str(v)[:30] for k, v in change.items()}):
            body = {k: v for k, v in {**new_clip, **change}.items() if v is not None}
            problem = await read_problem(await client.post("/clips", json=body), 400)
            assert set(error_fields(problem)) == fields
            for field in fields:
                assert field in problem["detail"]
    assert await clip_count(pool) == 1  # nothing written


async def test_create_without_any_field_lists_every_required_one(client, pool):
    problem = await read_problem(await client.post("/clips", json={}), 400)
    assert set(error_fields(problem)) == {"title", "genre", "duration_seconds", "audio_url"}
    assert all(error["reason"] for error in problem["errors"])
    assert await clip_count(pool) == 0


UNREADABLE_BODIES = [
    (b'{"title": "unterminated', "application/json", 400),
    (b"", "application/json", 400),
    (b'{"title": "\xff"}', "application/json", 400),  # not UTF-8
    (b'[{"title": "in an array"}]', "application/json", 400),
    (b'"just a string"', "application/json", 400),
    (b"[" * 60_000, "application/json", 400),  # deeper than the parser goes
    (b'{"title": "x"}', "text/plain", 415),
    (b"title=x", "application/x-www-form-urlencoded", 415),
    (b'{"title": "x"}', None, 415),
    (b'{"title": "' + b"x" * (64 * 1024) + b'"}', "application/json", 413),
]


async def test_create_refuses_bodies_it_cannot_read(client, pool, remote, subtests):
    await remote()
    for data, content_type, status in UNREADABLE_BODIES:
        with subtests.test(body=data[:30], content_type=content_type):
            headers = {"Content-Type": content_type} if content_type else {}
            response = await client.post(
                "/clips", data=data, headers=headers, skip_auto_headers={"Content-Type"}
            )
            await read_problem(response, status)
    assert await clip_count(pool) == 1  # nothing written


async def test_create_accepts_json_with_a_charset(client, new_clip):
    response = await client.post(
        "/clips",
        data=json.dumps(new_clip).encode(),
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert response.status == 201


# --- PATCH and DELETE /clips/{id} ------------------------------------------------


async def test_patch_changes_fields_and_the_etag(client, make_clip):
    clip_id = await make_clip(audio_url="https://cdn.example.invalid/a.mp3")
    first = await client.get(f"/clips/{clip_id}")
    etag = first.headers["ETag"]
    response = await client.patch(
        f"/clips/{clip_id}", json={"title": "Renamed", "genre": "jazz"}, headers={"If-Match": etag}
    )
    assert response.status == 200
    body = await response.json()
    assert (body["title"], body["genre"]) == ("Renamed", "jazz")
    assert response.headers["ETag"] != etag
    stale = await client.patch(
        f"/clips/{clip_id}", json={"title": "Lost update"}, headers={"If-Match": etag}
    )
    await read_problem(stale, 412)
    assert (await (await client.get(f"/clips/{clip_id}")).json())["title"] == "Renamed"


@pytest.mark.parametrize(
    "changes",
    [{"genre": "Bad Genre"}, {"title": ""}, {"duration_seconds": -1}, {"play_count": 5},
     {"audio_url": "ftp://x/a.mp3"}, {"audio_url": "http://10.0.0.1/a.mp3"}],
)  # fmt: skip
async def test_patch_validates_like_create_and_changes_nothing(client, make_clip, changes):
    clip_id = await make_clip(audio_url="https://cdn.example.invalid/a.mp3")
    before = await (await client.get(f"/clips/{clip_id}")).json()
    problem = await read_problem(await client.patch(f"/clips/{clip_id}", json=changes), 400)
    assert error_fields(problem) == list(changes)
    assert await (await client.get(f"/clips/{clip_id}")).json() == before


async def test_patch_cannot_give_stored_audio_a_url(client, make_clip):
    clip_id = await make_clip(media_path="small.mp3")
    response = await client.patch(f"/clips/{clip_id}", json={"audio_url": "https://a.example/x"})
    await read_problem(response, 400)
    assert (await (await client.get(f"/clips/{clip_id}")).json())["audio_url"] is None


async def test_patch_and_delete_unknown_clips_are_404(client):
    await read_problem(await client.patch("/clips/999999", json={"title": "x"}), 404)
    await read_problem(await client.delete("/clips/999999"), 404)


@pytest.mark.parametrize("media_store", ["local", "s3"], indirect=True)
async def test_delete_removes_the_row_and_the_stored_file(client, pool, stored):
    created = await (await client.post("/clips", data=upload_form(MP3))).json()
    before = stored()
    stale = await client.delete(f"/clips/{created['id']}", headers={"If-Match": '"1-0.0"'})
    await read_problem(stale, 412)
    assert await clip_count(pool) == 1  # a stale delete deletes nothing
    response = await client.delete(f"/clips/{created['id']}")
    assert response.status == 204
    assert (await client.get(f"/clips/{created['id']}")).status == 404
    assert (await client.get(f"/clips/{created['id']}/stream")).status == 404
    assert len(before - stored()) == 1
    assert await clip_count(pool) == 0
