"""Uploading audio, editing and deleting clips."""

import asyncio
import hashlib
import shutil
import subprocess

import aiohttp
import pytest

LAME = shutil.which("lame")


@pytest.fixture(scope="session")
def mp3(audio_dir, tmp_path_factory) -> bytes:
    """A real MP3 (20 s), encoded by Debian's lame from the test tune."""
    if LAME is None:
        pytest.skip("lame is not installed: run `make test-deps` (apt-get install lame)")
    out = tmp_path_factory.mktemp("mp3") / "tune.mp3"
    subprocess.run([LAME, "--quiet", "-b", "128", str(audio_dir / "tune.wav"), str(out)],
                   check=True)  # fmt: skip
    return out.read_bytes()


def form(audio: bytes | None, filename: str = "song.mp3", **fields: str) -> aiohttp.FormData:
    data = aiohttp.FormData(default_to_multipart=True)
    for name, value in {"title": "Uploaded", "genre": "rock", **fields}.items():
        data.add_field(name, value)
    if audio is not None:
        data.add_field("audio", audio, filename=filename, content_type="audio/mpeg")
    return data


def media_files(media_dir) -> set[str]:
    return {p.name for p in media_dir.iterdir()}


async def clip_count(client) -> int:
    return len(await (await client.get("/clips?limit=200")).json())


async def test_an_mp3_upload_becomes_a_playable_clip(client, media_dir, mp3):
    before = media_files(media_dir)
    response = await client.post("/clips", data=form(mp3, description="Mine"))
    assert response.status == 201, await response.text()
    clip = await response.json()
    assert clip["content_type"] == "audio/mpeg"
    assert clip["audio_url"] is None
    assert clip["size_bytes"] == len(mp3)
    assert clip["sha256"] == hashlib.sha256(mp3).hexdigest()
    assert clip["duration_seconds"] == pytest.approx(20.0, abs=0.2)  # read, not trusted
    assert clip["bitrate"] == 128_000
    (stored,) = media_files(media_dir) - before
    assert stored.endswith(".mp3") and stored != "song.mp3"
    stream = await client.get(f"/clips/{clip['id']}/stream")
    assert await stream.read() == mp3


async def test_a_wav_upload_is_recognised_by_its_bytes(client, audio_dir):
    wav = (audio_dir / "tune.wav").read_bytes()
    response = await client.post("/clips", data=form(wav, filename="song.mp3"))
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
    ],
)
async def test_what_is_not_audio_is_refused_and_leaves_nothing(client, media_dir, payload, status):
    before = media_files(media_dir), await clip_count(client)
    response = await client.post("/clips", data=form(payload))
    assert response.status == status
    assert response.content_type == "application/problem+json"
    assert (media_files(media_dir), await clip_count(client)) == before


async def test_a_truncated_mp3_is_refused(client, media_dir, mp3):
    before = media_files(media_dir)
    response = await client.post("/clips", data=form(mp3[:300]))
    assert response.status == 422
    assert media_files(media_dir) == before


async def test_an_upload_over_the_cap_is_413(settings, make_client, media_dir, mp3):
    client = await make_client(settings.changed({"max_upload_bytes": 64 * 1024}))
    before = media_files(media_dir)
    response = await client.post("/clips", data=form(mp3))
    assert response.status == 413
    assert media_files(media_dir) == before
    assert await clip_count(client) == 0


@pytest.mark.parametrize(
    ("fields", "field"),
    [({"genre": "Not A Genre"}, "genre"), ({"title": ""}, "title"), ({"extra": "x"}, None)],
)
async def test_bad_form_fields_leave_no_file(client, media_dir, mp3, fields, field):
    before = media_files(media_dir)
    response = await client.post("/clips", data=form(mp3, **fields))
    assert response.status == 400
    body = await response.json()
    if field:
        assert [e["field"] for e in body["errors"]] == [field]
    assert media_files(media_dir) == before


async def test_missing_file_and_malformed_multipart_are_400(client, media_dir):
    assert (await client.post("/clips", data=form(None))).status == 400
    garbage = await client.post(
        "/clips",
        data=b"--xyz\r\nnot a header\r\n\r\nbody",
        headers={"Content-Type": "multipart/form-data; boundary=xyz"},
    )
    assert garbage.status == 400
    assert garbage.content_type == "application/problem+json"


async def test_file_names_never_come_from_the_client(client, media_dir, mp3, tmp_path):
    response = await client.post("/clips", data=form(mp3, filename="../../../escape.mp3"))
    assert response.status == 201
    assert not (media_dir.parent / "escape.mp3").exists()
    assert not any(p.name == "escape.mp3" for p in tmp_path.rglob("*"))


async def test_an_aborted_upload_leaves_no_file_and_no_row(client, media_dir, mp3):
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
        + f"Content-Length: {len(head) + len(mp3) + 100}\r\n\r\n".encode()
        + head
        + mp3[: len(mp3) // 2]
    )
    await writer.drain()
    for _ in range(100):  # the partial file appears while the body arrives...
        if media_files(media_dir) - before:
            break
        await asyncio.sleep(0.02)
    writer.close()  # ...and the client goes away mid-file
    for _ in range(100):
        if media_files(media_dir) == before:
            break
        await asyncio.sleep(0.02)
    assert media_files(media_dir) == before
    assert await clip_count(client) == 0


async def test_20_concurrent_uploads(client, media_dir, mp3):
    before = media_files(media_dir)
    responses = await asyncio.gather(
        *(client.post("/clips", data=form(mp3, title=f"Upload {i}")) for i in range(20))
    )
    assert [r.status for r in responses] == [201] * 20
    clips = [await r.json() for r in responses]
    assert len({c["id"] for c in clips}) == 20
    assert len(media_files(media_dir) - before) == 20
    assert await clip_count(client) == 20


# --- Edit and delete -----------------------------------------------------------


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
    assert stale.status == 412
    assert (await (await client.get(f"/clips/{clip_id}")).json())["title"] == "Renamed"


@pytest.mark.parametrize(
    "changes",
    [{"genre": "Bad Genre"}, {"title": ""}, {"duration_seconds": -1}, {"play_count": 5},
     {"audio_url": "ftp://x/a.mp3"}, {"audio_url": "http://10.0.0.1/a.mp3"}],
)  # fmt: skip
async def test_patch_validates_like_create_and_changes_nothing(client, make_clip, changes):
    clip_id = await make_clip(audio_url="https://cdn.example.invalid/a.mp3")
    before = await (await client.get(f"/clips/{clip_id}")).json()
    response = await client.patch(f"/clips/{clip_id}", json=changes)
    assert response.status == 400
    assert await (await client.get(f"/clips/{clip_id}")).json() == before


async def test_patch_cannot_give_stored_audio_a_url(client, make_clip):
    clip_id = await make_clip(media_path="small.mp3")
    response = await client.patch(f"/clips/{clip_id}", json={"audio_url": "https://a.example/x"})
    assert response.status == 400


async def test_patch_and_delete_unknown_clips_are_404(client):
    assert (await client.patch("/clips/999999", json={"title": "x"})).status == 404
    assert (await client.delete("/clips/999999")).status == 404


async def test_delete_removes_the_row_and_the_stored_file(client, media_dir, mp3):
    created = await (await client.post("/clips", data=form(mp3))).json()
    stored = media_files(media_dir)
    stale = await client.delete(f"/clips/{created['id']}", headers={"If-Match": '"1-0.0"'})
    assert stale.status == 412
    response = await client.delete(f"/clips/{created['id']}")
    assert response.status == 204
    assert (await client.get(f"/clips/{created['id']}")).status == 404
    assert (await client.get(f"/clips/{created['id']}/stream")).status == 404
    assert len(stored - media_files(media_dir)) == 1
