"""The read-through cache of remote clips (streaming/cache.py) against real
origins on loopback that count their requests and do what they are told:
send no-store, max-age, ETag and 304, die mid-body, hold the body back
(a fill under way), or be down."""

import asyncio
import os

import aiohttp
import pytest
from aiohttp import web

from db.plays import PLAYS
from streaming.cache import CACHE, freshness
from streaming.ranges import http_date
from tests.scrape import metric, scrape, settled
from tests.support import wait_until

KIB = 1024
CACHE_BYTES = 64 * 1024 * 1024


class Told:
    """An origin on loopback: one body per path, with the validators and
    caching headers it is told to send. It counts every request (with its
    headers), answers If-None-Match with 304, and honours `bytes=N-`."""

    def __init__(self) -> None:
        self.bodies: dict[str, bytes] = {}
        self.etags: dict[str, str] = {}
        self.cache_control: str | None = None
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.gate: asyncio.Event | None = None  # holds the body after 64 KiB
        self.cut_at: int | None = None  # dies after this many bytes
        self.status: int | None = None
        self.app = web.Application()
        self.app.router.add_get("/{name}", self.answer)

    def seen(self, name: str) -> list[dict[str, str]]:
        return [headers for path, headers in self.requests if path == f"/{name}"]

    async def answer(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.path, dict(request.headers)))
        if self.status is not None:
            return web.Response(status=self.status, text="nope")
        name = request.match_info["name"]
        body, etag = self.bodies[name], self.etags[name]
        headers = {"Content-Type": "audio/mpeg", "ETag": etag}
        headers["Last-Modified"] = "Wed, 01 Jan 2025 00:00:00 GMT"
        if self.cache_control is not None:
            headers["Cache-Control"] = self.cache_control
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers=headers)
        start = 0
        if (wanted := request.headers.get("Range", "")).startswith("bytes="):
            start = int(wanted[6:].split("-")[0])
            headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
        response = web.StreamResponse(status=206 if start else 200, headers=headers)
        response.content_length = len(body) - start
        await response.prepare(request)
        if start:
            await response.write(body[start:])
            return response
        await response.write(body[: 64 * KIB])
        if self.gate is not None:
            await self.gate.wait()
        if self.cut_at is not None:
            await response.write(body[64 * KIB : self.cut_at])
            request.transport.close()  # dies mid-body
            return response
        await response.write(body[64 * KIB :])
        return response


@pytest.fixture
def cache_max_bytes() -> int:
    return CACHE_BYTES


@pytest.fixture
async def told(aiohttp_server):
    origin = Told()
    origin.server = await aiohttp_server(origin.app)
    return origin


@pytest.fixture
def remote(told, make_clip):
    """make(name, size) -> a clip on `told` whose audio is `size` random bytes."""

    async def make(name: str = "a.mp3", size: int = 512 * KIB) -> tuple[int, bytes]:
        told.bodies[name] = os.urandom(size)
        told.etags[name] = f'"{name}-1"'
        return await make_clip(audio_url=str(told.server.make_url(f"/{name}"))), told.bodies[name]

    return make


def cache_files(settings) -> list[str]:
    return (
        sorted(p.name for p in settings.cache_dir.iterdir()) if settings.cache_dir.exists() else []
    )


async def plays_of(client, clip_id: int) -> int:
    await client.server.app[PLAYS].flush()
    return (await (await client.get(f"/clips/{clip_id}")).json())["play_count"]


async def results(client) -> dict[str, float]:
    text = await scrape(client)
    return {
        r: metric(text, "clips_cache_requests_total", result=r)
        for r in ("hit", "miss", "coalesced", "revalidated", "stale", "bypass")
    }


async def listen(client, clip_id: int, **headers: str) -> tuple[int, bytes, dict]:
    response = await client.get(f"/clips/{clip_id}/stream", headers=headers)
    return response.status, await response.read(), response.headers


async def test_concurrent_listeners_share_one_origin_fetch(client, told, remote):
    clip_id, audio = await remote()
    told.gate = asyncio.Event()
    first = asyncio.create_task(listen(client, clip_id))
    await wait_until(lambda: told.seen("a.mp3"), "the fill's origin request")
    others = [asyncio.create_task(listen(client, clip_id)) for _ in range(19)]
    # All 20 streams started (headers sent) while the origin holds its body.
    await settled(client, "clips_streams_in_flight", 20)
    told.gate.set()
    answers = await asyncio.gather(first, *others)
    assert [status for status, _, _ in answers] == [200] * 20
    assert all(body == audio for _, body, _ in answers)
    assert len(told.seen("a.mp3")) == 1  # one origin fetch for 20 listeners
    assert await plays_of(client, clip_id) == 20
    counted = await results(client)
    assert (counted["miss"], counted["coalesced"]) == (1, 19)


async def test_a_hot_clip_is_one_origin_fetch_with_the_origins_validators(client, told, remote):
    clip_id, audio = await remote()
    piped = None
    for _ in range(5):
        status, body, headers = await listen(client, clip_id)
        assert (status, body) == (200, audio)
        piped = piped or headers
        assert headers["ETag"] == '"a.mp3-1"' == piped["ETag"]
        assert headers["Last-Modified"] == "Wed, 01 Jan 2025 00:00:00 GMT"
        assert headers["Cache-Control"] == "no-store"
        assert headers["Content-Type"] == "audio/mpeg"
    assert len(told.seen("a.mp3")) == 1
    # Conditional requests and If-Range against the origin's validators.
    status, _, _ = await listen(client, clip_id, **{"If-None-Match": '"a.mp3-1"'})
    assert status == 304
    status, body, headers = await listen(
        client, clip_id, Range="bytes=1000-1999", **{"If-Range": '"a.mp3-1"'}
    )
    assert (status, body) == (206, audio[1000:2000])
    assert headers["Content-Range"] == f"bytes 1000-1999/{len(audio)}"
    head = await client.head(f"/clips/{clip_id}/stream")
    assert head.status == 200 and head.headers["Content-Length"] == str(len(audio))
    assert len(told.seen("a.mp3")) == 1  # HEAD answered from the entry
    assert await plays_of(client, clip_id) == 5
    assert (await results(client))["hit"] == 4 + 3  # the listens after the first, 304, 206, HEAD


async def test_a_range_during_a_fill_is_served_from_the_file_or_the_origin(
    client, told, remote, app
):
    clip_id, audio = await remote(size=2 * 1024 * KIB)
    told.gate = asyncio.Event()  # the fill stops at 64 KiB until let go
    first = asyncio.create_task(listen(client, clip_id))
    await wait_until(lambda: app[CACHE].fills, "a fill under way")
    # Within what is written: from the filling file, the origin not asked.
    status, body, _ = await listen(client, clip_id, Range="bytes=0-1023")
    assert (status, body) == (206, audio[:1024])
    assert len(told.seen("a.mp3")) == 1
    # Beyond it: passed to the origin, which answers at once.
    status, body, _ = await listen(client, clip_id, Range="bytes=1048576-")
    assert (status, body) == (206, audio[1048576:])
    assert told.seen("a.mp3")[-1]["Range"] == "bytes=1048576-"
    told.gate.set()
    assert (await first)[:2] == (200, audio)
    assert await plays_of(client, clip_id) == 1


async def test_no_store_and_private_are_never_cached(client, told, remote, settings):
    for control in ("no-store", "private, max-age=600"):
        told.cache_control = control
        clip_id, audio = await remote(name=f"{control[:4]}.mp3")
        for _ in range(3):
            assert (await listen(client, clip_id))[:2] == (200, audio)
        assert len(told.seen(f"{control[:4]}.mp3")) == 3, control
    assert not [n for n in cache_files(settings) if not n.startswith(".")]


async def test_max_age_is_honoured_then_a_304_refreshes_and_a_change_refills(client, told, remote):
    told.cache_control = "max-age=0"  # stale at once: every listen revalidates
    clip_id, audio = await remote()
    assert (await listen(client, clip_id))[:2] == (200, audio)
    assert (await listen(client, clip_id))[:2] == (200, audio)
    asked = told.seen("a.mp3")
    assert len(asked) == 2 and asked[1]["If-None-Match"] == '"a.mp3-1"'
    assert (await results(client))["revalidated"] == 1
    # The origin's audio changes: the revalidation gets it, and so does
    # every listener after.
    told.bodies["a.mp3"], told.etags["a.mp3"] = os.urandom(300 * KIB), '"a.mp3-2"'
    status, body, headers = await listen(client, clip_id)
    assert (status, body, headers["ETag"]) == (200, told.bodies["a.mp3"], '"a.mp3-2"')
    told.cache_control = "max-age=3600"
    assert (await listen(client, clip_id))[1] == told.bodies["a.mp3"]  # a 200 with max-age
    before = len(told.seen("a.mp3"))
    for _ in range(3):
        assert (await listen(client, clip_id))[1] == told.bodies["a.mp3"]
    assert len(told.seen("a.mp3")) == before  # fresh: no origin request


async def test_least_recently_used_entries_are_evicted_by_bytes(
    settings, make_client, told, remote
):
    client = await make_client(settings.changed({"cache_max_bytes": 250 * KIB}))
    told.cache_control = "max-age=3600"
    clips = {name: await remote(name=name, size=100 * KIB) for name in ("a", "b", "c")}
    for name in ("a", "b", "a", "c"):  # a is used again before c arrives: b is oldest
        assert (await listen(client, clips[name][0]))[1] == clips[name][1]
    assert [len(told.seen(n)) for n in "abc"] == [1, 1, 1]
    assert metric(await scrape(client), "clips_cache_evictions_total") == 1
    assert metric(await scrape(client), "clips_cache_bytes") == 200 * KIB
    for name in ("a", "c", "b"):
        assert (await listen(client, clips[name][0]))[1] == clips[name][1]
    assert [len(told.seen(n)) for n in "abc"] == [1, 2, 1]  # only b was fetched again


async def test_a_cut_fill_leaves_no_entry_and_the_next_listener_refetches(
    client, told, remote, settings
):
    clip_id, audio = await remote()
    told.cut_at = 200 * KIB
    response = await client.get(f"/clips/{clip_id}/stream")
    assert response.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()  # cut short, as when piped
    assert await plays_of(client, clip_id) == 1  # counted when it started, as ever
    await wait_until(lambda: not client.server.app[CACHE].fills, "the fill ended")
    assert cache_files(settings) == []  # no entry, no part file
    told.cut_at = None
    assert (await listen(client, clip_id))[:2] == (200, audio)
    assert len(told.seen("a.mp3")) == 2
    text = await scrape(client)
    assert metric(text, "clips_streams_ended_total", reason="upstream_error") == 1


async def test_a_restarted_app_serves_its_entries_with_the_origin_down(
    settings, make_client, told, remote
):
    client = await make_client()
    clip_id, audio = await remote()
    assert (await listen(client, clip_id))[:2] == (200, audio)
    await client.close()
    # What a killed process leaves: a part file of a process that is gone.
    (settings.cache_dir / f".{clip_id}-x.4194305.dead.part").write_bytes(b"half")
    await told.server.close()  # the origin is down
    again = await make_client()
    assert (await listen(again, clip_id))[:2] == (200, audio)
    assert (await results(again))["hit"] == 1
    assert not [n for n in cache_files(settings) if n.endswith(".part")]


@pytest.mark.parametrize("change", ["patch", "delete"])
async def test_patch_and_delete_drop_the_clips_entry(client, told, remote, settings, change):
    told.cache_control = "max-age=3600"
    clip_id, audio = await remote()
    assert (await listen(client, clip_id))[1] == audio
    assert any(n.endswith(".audio") for n in cache_files(settings))
    if change == "delete":
        assert (await client.delete(f"/clips/{clip_id}")).status == 204
        assert cache_files(settings) == []
        return
    told.bodies["b.mp3"], told.etags["b.mp3"] = os.urandom(100 * KIB), '"b"'
    response = await client.patch(
        f"/clips/{clip_id}", json={"audio_url": str(told.server.make_url("/b.mp3"))}
    )
    assert response.status == 200
    assert (await listen(client, clip_id))[1] == told.bodies["b.mp3"]


@pytest.mark.parametrize("control", ["max-age=0", "max-age=0, must-revalidate"])
async def test_a_hot_clip_plays_through_an_origin_outage(client, told, remote, control):
    """Stale and unable to revalidate: served anyway (stale-if-error),
    unless the origin said it must be revalidated."""
    told.cache_control = control
    clip_id, audio = await remote()
    assert (await listen(client, clip_id))[:2] == (200, audio)
    told.status = 503
    status, body, _ = await listen(client, clip_id)
    if "must-revalidate" in control:
        assert status == 502
    else:
        assert (status, body) == (200, audio)
        assert (await results(client))["stale"] == 1
    await told.server.close()  # down altogether
    status, body, _ = await listen(client, clip_id)
    assert status == (502 if "must-revalidate" in control else 200)


async def test_an_origin_answering_gone_drops_the_entry(client, told, remote, settings):
    told.cache_control = "max-age=0"
    clip_id, audio = await remote()
    assert (await listen(client, clip_id))[1] == audio
    told.status = 404
    assert (await listen(client, clip_id))[0] == 502
    assert cache_files(settings) == []


async def test_plays_are_exact_with_the_cache_on(client, told, remote):
    clip_id, audio = await remote()
    told.gate = asyncio.Event()
    waves = [asyncio.create_task(listen(client, clip_id)) for _ in range(30)]
    seeks = [asyncio.create_task(listen(client, clip_id, Range="bytes=100-")) for _ in range(5)]
    probes = [asyncio.create_task(listen(client, clip_id, Range="bytes=0-1")) for _ in range(5)]
    await wait_until(lambda: told.requests, "the fill")
    told.gate.set()
    answers = await asyncio.gather(*waves, *seeks, *probes)
    assert [a[0] for a in answers] == [200] * 30 + [206] * 10
    assert all(a[1] == audio for a in answers[:30])
    assert all(a[1] == audio[100:] for a in answers[30:35])
    assert await plays_of(client, clip_id) == 30
    for _ in range(10):
        await listen(client, clip_id)
    assert await plays_of(client, clip_id) == 40


NOW = 1_800_000_000.0
DATE = "Fri, 15 Jan 2027 08:00:00 GMT"  # NOW, as an origin's Date


@pytest.mark.parametrize(
    ("headers", "fresh_for", "must_revalidate"),
    [
        ({"Cache-Control": "no-store"}, None, False),
        ({"Cache-Control": "private, max-age=600"}, None, False),
        ({"Cache-Control": "max-age=600", "Vary": "*"}, None, False),
        ({"Cache-Control": "max-age=600"}, 600, False),
        ({"Cache-Control": "max-age=600", "Age": "100"}, 500, False),
        ({"Cache-Control": "max-age=600, s-maxage=60"}, 60, True),  # shared caches' own
        ({"Cache-Control": "no-cache, max-age=600"}, 0, False),  # stored, revalidated
        ({"Cache-Control": "max-age=60, must-revalidate"}, 60, True),
        ({"Date": DATE, "Expires": "Fri, 15 Jan 2027 09:00:00 GMT"}, 3600, False),
        ({"Date": DATE, "Expires": "0"}, 0, False),  # invalid: already expired
        # Heuristic: a tenth of the time since Last-Modified, at most a day.
        ({"Date": DATE, "Last-Modified": "Fri, 15 Jan 2027 07:00:00 GMT"}, 360, False),
        ({"Date": DATE, "Last-Modified": "Thu, 01 Jan 2026 00:00:00 GMT"}, 86400, False),
        ({}, 300, False),  # nothing to go on: 5 minutes
    ],
)
def test_freshness_follows_rfc_9111(headers, fresh_for, must_revalidate):
    """What the origin says decides how long a listener is served without
    asking it again (streaming/cache.py, README "The cache of remote clips")."""
    assert http_date(DATE).timestamp() == NOW
    fresh = freshness(headers, NOW)
    if fresh_for is None:
        assert fresh is None
    else:
        assert fresh == (pytest.approx(NOW + fresh_for), must_revalidate)
