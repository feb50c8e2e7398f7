"""The demo catalogue: real audio that plays offline, loaded once."""

import asyncio
import hashlib
import io
import os
import sys
import wave

import asyncpg
import mutagen

from db.seed import DEMOS, PUBLIC, seed
from settings import ROOT
from tests.support import wait_until


async def test_seed_adds_six_playable_clips_once(database_url, tmp_path, client):
    media = tmp_path / "seed-media"
    assert await seed(database_url, media, public_urls=False) == len(DEMOS) == 6
    assert await seed(database_url, media, public_urls=False) == 0  # twice changes nothing

    for name, *_ in DEMOS:
        with wave.open(str(media / name)) as audio:  # a real WAV, long enough to listen to
            assert audio.getnframes() / audio.getframerate() >= 20
            assert audio.getsampwidth() == 2

    clips = await (await client.get("/clips", params={"sort": "title"})).json()
    assert sorted(c["title"] for c in clips) == sorted(title for _, title, *_ in DEMOS)
    for clip in clips:
        assert clip["audio_url"] is None  # stored here, plays offline
        assert clip["content_type"] == "audio/wav"
        assert clip["duration_seconds"] >= 20


async def test_seeded_clips_record_their_files_facts_as_uploads_do(database_url, tmp_path, client):
    """Size, SHA-256 and bitrate (mutagen's, as an upload gets), also for a
    catalogue seeded before they were recorded; a restore can be checked."""
    media = tmp_path / "seed-media"
    await seed(database_url, media)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "UPDATE clips SET size_bytes = NULL, sha256 = NULL, bitrate = NULL"
            " WHERE media_path = $1",
            DEMOS[0][0],
        )
    finally:
        await conn.close()
    assert await seed(database_url, media) == 0

    clips = await (await client.get("/clips")).json()
    assert len(clips) == len(DEMOS)
    files = {title: media / name for name, title, *_ in DEMOS}
    for clip in clips:
        data = files[clip["title"]].read_bytes()
        assert clip["size_bytes"] == len(data)
        assert clip["sha256"] == hashlib.sha256(data).hexdigest()
        assert clip["bitrate"] == mutagen.File(io.BytesIO(data)).info.bitrate


async def test_seed_with_public_urls_adds_them_once(database_url, tmp_path, client):
    media = tmp_path / "seed-media"
    assert await seed(database_url, media, public_urls=True) == len(DEMOS) + len(PUBLIC)
    assert await seed(database_url, media, public_urls=True) == 0
    clips = await (await client.get("/clips")).json()
    remote = sorted(c["audio_url"] for c in clips if c["audio_url"] is not None)
    assert remote == sorted(url for *_, url in PUBLIC)


async def test_seed_keeps_the_files_it_already_wrote(database_url, tmp_path):
    media = tmp_path / "seed-media"
    await seed(database_url, media)
    written = {p.name: p.stat().st_mtime_ns for p in media.iterdir()}
    await seed(database_url, media)
    assert {p.name: p.stat().st_mtime_ns for p in media.iterdir()} == written


async def test_seed_command_says_in_one_line_when_the_database_is_unreachable(tmp_path):
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "db.seed",
        cwd=ROOT,
        env={
            "PATH": os.environ["PATH"],
            "DATABASE_URL": "postgresql://clips@127.0.0.1:1/clips",
            "MEDIA_DIR": str(tmp_path),
        },
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        _, stderr = await process.communicate()
    assert process.returncode != 0
    lines = stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("seed failed: ")
    assert "127.0.0.1" in lines[0]


async def test_the_demo_clips_get_previews_and_peaks(database_url, settings, make_client):
    """The seed queues their jobs; a server running jobs makes them: each
    demo clip then plays a preview a fifth of its WAV's size, and has peaks."""
    await seed(database_url, settings.media_dir)
    client = await make_client(settings.changed({"job_workers": 1, "job_poll_seconds": 0.2}))

    async def all_ready():
        clips = await (await client.get("/clips")).json()
        return clips if all(c["preview"]["status"] == "ready" for c in clips) else None

    clips = await wait_until(all_ready, "every demo preview", seconds=60, interval=0.2)
    assert len(clips) == len(DEMOS)
    for clip in clips:
        assert clip["preview"]["size_bytes"] < clip["size_bytes"] / 5
        peaks = await client.session.get(clip["peaks_url"])
        assert peaks.status == 200
        assert (await peaks.json())["length"] > 0
