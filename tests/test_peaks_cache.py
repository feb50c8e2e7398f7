"""A remote clip's peaks are made from the read-through cache's copy
(streaming/cache.py) when it holds one: played once, a clip gets its
waveform with its origin down, and its origin is asked once. Against the
real app, PostgreSQL and an origin on loopback; the peaks made by another
server process sharing CACHE_DIR.
"""

import math
import wave

from aiohttp import web

from db import jobs as queue
from tests.support import wait_until

CACHE_BYTES = 64 * 1024 * 1024


async def remote_clip(client, url: str) -> dict:
    response = await client.post(
        "/clips",
        json={"title": "Remote tune", "genre": "rock", "duration_seconds": 20.0, "audio_url": url},
    )
    assert response.status == 201, await response.text()
    return await response.json()


async def peaks_of(client, clip: dict) -> dict:
    async def peaks():
        response = await client.session.get(clip["peaks_url"])
        return await response.json() if response.status == 200 else None

    return await wait_until(peaks, "the remote clip's peaks", seconds=30, interval=0.1)


def check_length(peaks: dict, path) -> None:
    """The waveform covers the whole file, as decoded from these bytes."""
    with wave.open(str(path)) as audio:
        frames, rate = audio.getnframes(), audio.getframerate()
    assert peaks["sample_rate"] == rate
    assert peaks["length"] == math.ceil(frames / peaks["samples_per_pixel"])


async def played_once(client, clip: dict, settings) -> bytes:
    """Play the clip whole; returns its bytes once the cache holds them."""
    stream = await client.session.get(clip["stream_url"])
    assert stream.status == 200
    body = await stream.read()
    await wait_until(
        lambda: list(settings.cache_dir.glob(f"{clip['id']}-*.json")), "the cache's entry"
    )
    return body


async def test_peaks_of_a_played_remote_clip_come_from_the_cache_with_its_origin_down(
    settings, make_client, aiohttp_server, audio_dir, pool
):
    asked = []

    async def tune(request: web.Request) -> web.FileResponse:
        asked.append(dict(request.headers))
        response = web.FileResponse(audio_dir / "tune.wav")
        response.headers["Cache-Control"] = "max-age=3600"
        return response

    origin = web.Application()
    origin.router.add_get("/tune.wav", tune)
    server = await aiohttp_server(origin)
    cached = settings.changed({"cache_max_bytes": CACHE_BYTES})
    api = await make_client(cached)  # runs no jobs: the peaks wait for the play
    clip = await remote_clip(api, str(server.make_url("/tune.wav")))
    body = await played_once(api, clip, cached)
    assert body == (audio_dir / "tune.wav").read_bytes()

    await server.close()  # the origin is down from here on
    await make_client(cached.changed({"job_workers": 1, "job_poll_seconds": 0.2}))
    peaks = await peaks_of(api, clip)
    check_length(peaks, audio_dir / "tune.wav")
    assert len(asked) == 1  # the listener's; the job read the cache's copy
    assert [r["state"] for r in await queue.job_states(pool, clip["id"])] == ["done"]
    assert [r["attempts"] for r in await queue.job_states(pool, clip["id"])] == [1]


async def test_a_stale_cached_copy_its_origin_confirms_makes_the_peaks(
    settings, make_client, aiohttp_server, audio_dir
):
    asked = []

    path = audio_dir / "tune.wav"
    stat = path.stat()
    etag = f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"'
    kept_but_stale = {"ETag": etag, "Cache-Control": "no-cache"}

    async def tune(request: web.Request) -> web.StreamResponse:
        if request.headers.get("If-None-Match") == etag:
            asked.append(304)
            return web.Response(status=304, headers=kept_but_stale)
        asked.append(200)
        return web.Response(body=path.read_bytes(), headers=kept_but_stale)

    origin = web.Application()
    origin.router.add_get("/tune.wav", tune)
    server = await aiohttp_server(origin)
    cached = settings.changed({"cache_max_bytes": CACHE_BYTES})
    api = await make_client(cached)
    clip = await remote_clip(api, str(server.make_url("/tune.wav")))
    await played_once(api, clip, cached)

    await make_client(cached.changed({"job_workers": 1, "job_poll_seconds": 0.2}))
    peaks = await peaks_of(api, clip)
    check_length(peaks, audio_dir / "tune.wav")
    # The listener's request, then the job's revalidation, answered 304:
    # the body crossed the network once.
    assert asked == [200, 304]
