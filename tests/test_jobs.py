"""How jobs end besides done, against the real app and PostgreSQL: retried
with backoff and failed for good with the reason, killed when they overrun
JOB_TIMEOUT_SECONDS, given back when the app stops, and cleaned up with a
deleted clip."""

import io
import os

import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestServer

from db import POOL, clips
from db import jobs as queue
from jobs import JOBS
from server import SERVER_OPTIONS, create_app
from tests.audio import stereo_wav
from tests.scrape import metric, scrape
from tests.support import media_files, read_problem, upload_form, wait_until


def running_jobs(settings, **changes):
    return settings.changed({"job_workers": 1, "job_poll_seconds": 0.1, **changes})


async def states(pool, clip_id: int) -> dict[str, dict]:
    return {r["kind"]: dict(r) for r in await queue.job_states(pool, clip_id)}


async def ended(pool, clip_id: int, kind: str) -> dict:
    async def job():
        row = (await states(pool, clip_id)).get(kind)
        return row if row and row["state"] in ("done", "failed") else None

    return await wait_until(job, f"the {kind} job to end", seconds=30, interval=0.05)


async def test_an_origin_failing_is_retried_then_fails_for_good(
    settings, make_client, aiohttp_server
):
    asked = []

    async def broken(request: web.Request) -> web.Response:
        asked.append(request.path)
        return web.Response(status=500)

    origin = web.Application()
    origin.router.add_get("/a.mp3", broken)
    server = await aiohttp_server(origin)
    client = await make_client(running_jobs(settings, job_max_attempts=3, job_retry_seconds=0.1))
    response = await client.post(
        "/clips",
        json={
            "title": "Broken origin", "genre": "rock", "duration_seconds": 10.0,
            "audio_url": str(server.make_url("/a.mp3")),
        },
    )  # fmt: skip
    clip = await response.json()
    pool = client.server.app[POOL]
    job = await ended(pool, clip["id"], "peaks")
    assert job["state"] == "failed" and job["attempts"] == 3
    assert "answered 500" in job["last_error"] and "after 3 attempts" in job["last_error"]
    assert asked == ["/a.mp3"] * 3
    problem = await read_problem(await client.get(f"/clips/{clip['id']}/peaks"), 404)
    assert "could not be computed" in problem["detail"]
    text = await scrape(client)
    assert metric(text, "clips_jobs_total", kind="peaks", outcome="retried") == 2
    assert metric(text, "clips_jobs_total", kind="peaks", outcome="failed") == 1


async def held_clip(pool, media_dir, kinds=("preview",)) -> int:
    """A stored clip whose audio is a FIFO nobody writes to: its job opens
    it and waits there until killed."""
    os.mkfifo(media_dir / "held.wav")
    clip = await clips.create_clip(
        pool, title="Held", description="", genre="rock", duration_seconds=20.0,
        audio_url=None, media_path="held.wav", content_type="audio/wav", jobs=kinds,
    )  # fmt: skip
    return clip["id"]


async def test_a_job_past_its_time_is_killed_and_fails(settings, make_client, media_dir):
    client = await make_client(running_jobs(settings, job_timeout_seconds=0.5, job_max_attempts=1))
    pool = client.server.app[POOL]
    clip_id = await held_clip(pool, media_dir)
    client.server.app[JOBS].wake()
    job = await ended(pool, clip_id, "preview")
    assert job["state"] == "failed"
    assert "longer than JOB_TIMEOUT_SECONDS (0.5 s)" in job["last_error"]
    clip = await (await client.get(f"/clips/{clip_id}")).json()
    assert clip["preview"]["status"] == "failed"
    assert clip["preview"]["reason"] == job["last_error"]


async def test_a_stopping_app_gives_its_job_back(settings, database_url, media_dir):
    server = TestServer(create_app(running_jobs(settings)))
    await server.start_server(**SERVER_OPTIONS)
    conn = await asyncpg.connect(database_url)
    try:
        clip_id = await held_clip(conn, media_dir)
        server.app[JOBS].wake()

        async def running():
            return (await states(conn, clip_id))["preview"]["state"] == "running"

        await wait_until(running, "the job running", seconds=30)
        await server.close()
        job = (await states(conn, clip_id))["preview"]
        # Due again at once, for any runner, its attempt not counted.
        assert job["state"] == "queued" and job["attempts"] == 0
    finally:
        await conn.close()
        await server.close()


async def test_deleting_a_clip_removes_its_preview_too(settings, make_client, media_dir):
    client = await make_client(running_jobs(settings))
    before = media_files(media_dir)
    form = upload_form(io.BytesIO(stereo_wav(5.0)), "take.wav")
    clip = await (await client.post("/clips", data=form)).json()

    async def ready():
        body = await (await client.get(f"/clips/{clip['id']}")).json()
        return body["preview"]["status"] == "ready"

    await wait_until(ready, "the preview", seconds=30, interval=0.05)
    assert len(media_files(media_dir) - before) == 2  # the original and its preview
    assert (await client.delete(f"/clips/{clip['id']}")).status == 204
    assert media_files(media_dir) == before


def adts_aac(frames: int = 500, payload: int = 200) -> bytes:
    """AAC in ADTS frames (44.1 kHz stereo, LC) with noise for payload: the
    upload path takes AAC, the job processes do not decode it."""
    length = 7 + payload
    header = bytes(
        [0xFF, 0xF1, (1 << 6) | (4 << 2), (2 << 6) | (length >> 11), (length >> 3) & 0xFF,
         ((length & 7) << 5) | 0x1F, 0xFC]
    )  # fmt: skip
    return b"".join(header + os.urandom(payload) for _ in range(frames))


async def test_audio_no_job_decodes_fails_with_the_reason_and_plays(
    settings, make_client, media_dir
):
    client = await make_client(running_jobs(settings))
    (media_dir / "take.aac").write_bytes(adts_aac())
    created = await clips.create_clip(
        client.server.app[POOL], title="AAC", description="", genre="rock",
        duration_seconds=11.6, audio_url=None, media_path="take.aac", content_type="audio/aac",
        jobs=("preview", "peaks"),
    )  # fmt: skip
    client.server.app[JOBS].wake()
    for kind in ("preview", "peaks"):
        job = await ended(client.server.app[POOL], created["id"], kind)
        assert job["state"] == "failed" and job["attempts"] == 1
        assert "(AAC) cannot be decoded here" in job["last_error"]
    clip = await (await client.get(f"/clips/{created['id']}")).json()
    assert clip["preview"]["status"] == "failed"
    assert "WAV, FLAC, MP3 and Ogg Vorbis" in clip["preview"]["reason"]
    stream = await client.get(f"/clips/{created['id']}/stream")
    assert stream.status == 200 and stream.content_type == "audio/aac"
    assert await stream.read() == (media_dir / "take.aac").read_bytes()
