"""Kept pages of GET /clips (LIST_CACHE_SECONDS): a page rendered a moment
ago is answered again; this process's own writes show at once; a page is
shared by requests that ask the same, whatever else their query carries."""

import pytest
import yarl

from db import POOL, clips


@pytest.fixture
async def kept(make_client, settings):
    """The app with pages kept for a minute: no test here sees one expire."""
    return await make_client(settings.changed({"list_cache_seconds": 60.0}))


@pytest.fixture
def add_clip(kept):
    async def add(title: str, genre: str = "rock") -> int:
        row = await clips.create_clip(
            kept.server.app[POOL],
            title=title,
            description="",
            genre=genre,
            duration_seconds=20.0,
            audio_url="http://127.0.0.1:9/a.mp3",
            media_path=None,
            content_type="audio/mpeg",
        )
        return row["id"]

    return add


async def titles(client, query: str = "") -> list[str]:
    response = await client.get(f"/clips{query}")
    assert response.status == 200
    return [clip["title"] for clip in await response.json()]


async def rename_behind_the_app(client, clip_id: int, title: str) -> None:
    # As another worker, a replica or an operator's SQL would.
    await client.server.app[POOL].execute(
        "UPDATE clips SET title = $2 WHERE id = $1", clip_id, title
    )


async def test_a_page_is_answered_again_until_this_process_writes(kept, add_clip):
    clip_id = await add_clip("Before")
    assert await titles(kept) == ["Before"]
    await rename_behind_the_app(kept, clip_id, "Behind")
    assert await titles(kept) == ["Before"]  # the kept page
    assert await titles(kept, "?q=&genre=") == ["Before"]  # empty means absent: the same page
    assert await titles(kept, "?genre=rock") == ["Behind"]  # another page, rendered now
    patched = await kept.patch(f"/clips/{clip_id}", json={"description": "edited"})
    assert patched.status == 200
    assert await titles(kept) == ["Behind"]


async def test_clips_created_and_deleted_here_show_at_once(kept):
    assert await titles(kept) == []
    created = await kept.post(
        "/clips",
        json={
            "title": "New",
            "genre": "rock",
            "duration_seconds": 10.0,
            "audio_url": "http://127.0.0.1:9/new.mp3",
        },
    )
    assert created.status == 201
    assert await titles(kept) == ["New"]
    deleted = await kept.delete(f"/clips/{(await created.json())['id']}")
    assert deleted.status == 204
    assert await titles(kept) == []


async def test_with_zero_every_list_reads_the_catalogue(client, make_clip):
    clip_id = await make_clip(title="Before", audio_url="http://127.0.0.1:9/a.mp3")
    assert await titles(client) == ["Before"]
    await rename_behind_the_app(client, clip_id, "Behind")
    assert await titles(client) == ["Behind"]


async def test_the_link_keeps_each_requests_own_path_and_query(kept, add_clip):
    older, newer = await add_clip("Older"), await add_clip("Newer")
    first = await kept.get("/clips?limit=1")
    again = await kept.get("/clips/?utm_source=mail&limit=1")  # the same page, kept
    assert await first.json() == await again.json()
    assert [clip["id"] for clip in await first.json()] == [newer]
    link = yarl.URL(again.headers["Link"].split(">")[0].lstrip("<"))
    assert link.path == "/clips/"
    assert link.query["utm_source"] == "mail" and link.query["limit"] == "1"
    following = await kept.get(link.path_qs)
    assert [clip["id"] for clip in await following.json()] == [older]
    assert "Link" not in following.headers


async def test_stream_urls_name_the_host_each_request_used(kept, add_clip):
    await add_clip("Clip")
    plain = await (await kept.get("/clips")).json()
    named = await (await kept.get("/clips", headers={"Host": "clips.example:8443"})).json()
    assert yarl.URL(plain[0]["stream_url"]).host == "127.0.0.1"
    assert yarl.URL(named[0]["stream_url"]).authority == "clips.example:8443"
