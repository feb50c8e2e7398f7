"""Uploading audio: what the bytes are decides, and a refused upload leaves
no file and no row."""

import asyncio
import hashlib

import pytest

from db import POOL
from tests.support import (
    MP3,
    MP3_BITRATE,
    MP3_SECONDS,
    clip_count,
    error_fields,
    media_files,
    read_problem,
    upload_form,
    wait_until,
)


async def test_an_mp3_upload_becomes_a_playable_clip(client, media_dir):
    before = media_files(media_dir)
    response = await client.post("/clips", data=upload_form(MP3, description="Mine"))
    assert response.status == 201, await response.text()
    clip = await response.json()
    assert clip["content_type"] == "audio/mpeg"
    assert clip["audio_url"] is None
    assert clip["size_bytes"] == len(MP3)
    assert clip["sha256"] == hashlib.sha256(MP3).hexdigest()
    assert clip["duration_seconds"] == pytest.approx(MP3_SECONDS, abs=0.1)  # read, not trusted
    assert clip["bitrate"] == MP3_BITRATE
    (stored,) = media_files(media_dir) - before
    assert stored.endswith(".mp3") and stored != "song.mp3"
    stream = await client.get(f"/clips/{clip['id']}/stream")
    assert await stream.read() == MP3


async def test_a_wav_upload_is_recognised_by_its_bytes(client, audio_dir):
    wav = (audio_dir / "tune.wav").read_bytes()
    response = await client.post("/clips", data=upload_form(wav, filename="song.mp3"))
    assert response.status == 201
    clip = await response.json()
    assert clip["content_type"] == "audio/wav"
    assert clip["duration_seconds"] == pytest.approx(20.0, abs=0.01)


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        (b"just some text, honestly\n" * 100, 415),  # a text file named .mp3
        (b"\x00\x01\x02\x03" * 1000, 415),
        (b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\x00" * 50, 422),  # truncated: a tag, no audio
        (MP3[:300], 422),  # truncated: the first frames of a real MP3
    ],
    ids=["text", "binary", "id3-tag-only", "truncated-mp3"],
)
async def test_what_is_not_audio_is_refused_and_leaves_nothing(
    client, pool, media_dir, payload, status
):
    before = media_files(media_dir), await clip_count(pool)
    await read_problem(await client.post("/clips", data=upload_form(payload)), status)
    assert (media_files(media_dir), await clip_count(pool)) == before


async def test_an_upload_over_the_cap_is_413(settings, make_client, media_dir):
    cap = 16 * 1024
    assert len(MP3) > cap
    client = await make_client(settings.changed({"max_upload_bytes": cap}))
    before = media_files(media_dir)
    await read_problem(await client.post("/clips", data=upload_form(MP3)), 413)
    assert media_files(media_dir) == before
    assert await clip_count(client.server.app[POOL]) == 0


@pytest.mark.parametrize(
    ("fields", "wrong"),
    [({"genre": "Not A Genre"}, ["genre"]), ({"title": ""}, ["title"]), ({"extra": "x"}, [])],
)
async def test_bad_form_fields_leave_no_file(client, media_dir, fields, wrong):
    before = media_files(media_dir)
    response = await client.post("/clips", data=upload_form(MP3, **fields))
    body = await read_problem(response, 400)
    assert error_fields(body) == wrong
    assert media_files(media_dir) == before


async def test_missing_file_and_malformed_multipart_are_400(client, pool):
    await read_problem(await client.post("/clips", data=upload_form(None)), 400)
    garbage = await client.post(
        "/clips",
        data=b"--xyz\r\nnot a header\r\n\r\nbody",
        headers={"Content-Type": "multipart/form-data; boundary=xyz"},
    )
    await read_problem(garbage, 400)
    assert await clip_count(pool) == 0


async def test_file_names_never_come_from_the_client(client, media_dir, tmp_path):
    response = await client.post("/clips", data=upload_form(MP3, filename="../../../escape.mp3"))
    assert response.status == 201
    assert not (media_dir.parent / "escape.mp3").exists()
    assert not any(p.name == "escape.mp3" for p in tmp_path.rglob("*"))


async def test_an_aborted_upload_leaves_no_file_and_no_row(client, pool, media_dir):
    before = media_files(media_dir)
    boundary = "abortabort"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="title"\r\n\r\nGone\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="genre"\r\n\r\nrock\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="audio"; filename="a.mp3"\r\n'
        "Content-Type: audio/mpeg\r\n\r\n"
    ).encode()
    _, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        b"POST /clips HTTP/1.1\r\nHost: x\r\n"
        + f"Content-Type: multipart/form-data; boundary={boundary}\r\n".encode()
        + f"Content-Length: {len(head) + len(MP3) + 100}\r\n\r\n".encode()
        + head
        + MP3[: len(MP3) // 2]
    )
    await writer.drain()
    # The partial file appears while the body arrives...
    await wait_until(lambda: media_files(media_dir) - before, "the partial upload on disk")
    writer.close()  # ...and the client goes away mid-file
    await wait_until(lambda: media_files(media_dir) == before, "the partial upload removed")
    assert await clip_count(pool) == 0


async def test_20_concurrent_uploads(client, pool, media_dir):
    before = media_files(media_dir)
    responses = await asyncio.gather(
        *(client.post("/clips", data=upload_form(MP3, title=f"Upload {i}")) for i in range(20))
    )
    assert [r.status for r in responses] == [201] * 20
    clips = [await r.json() for r in responses]
    assert len({c["id"] for c in clips}) == 20
    assert len(media_files(media_dir) - before) == 20
    assert await clip_count(pool) == 20
