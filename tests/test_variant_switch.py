"""A stream URL a player holds plays the same bytes for as long as it plays,
across the moment a clip's preview becomes ready (the clip's stream_url
names `variant=original` until then), and the preview and the original
never pass for one another in conditional requests. Against the real app,
PostgreSQL and media stores; the preview made by another server process.
"""

import io

import pytest
from yarl import URL

from tests.audio import stereo_wav
from tests.support import upload_form, wait_until

READ_KEY = "read-key-0123456789abcdef"
WRITE_KEY = "write-key-0123456789abcdef"


async def upload(client, audio: bytes, headers: dict | None = None) -> dict:
    form = upload_form(io.BytesIO(audio), "take.wav")
    response = await client.post("/clips", data=form, headers=headers or {})
    assert response.status == 201, await response.text()
    return await response.json()


@pytest.mark.parametrize("media_store", ["local", "s3"], indirect=True)
async def test_a_url_held_across_the_preview_becoming_ready_plays_the_same_bytes(
    settings, make_client, media_store
):
    wav = stereo_wav(6.0)
    # This process runs no jobs and keeps the clip's row for an hour: the
    # preview is made by another process, as with WORKERS > 1 or replicas.
    api = await make_client(settings.changed({"clip_cache_seconds": 3600}))
    created = await upload(api, wav)
    assert created["preview"]["status"] == "pending"
    held = created["stream_url"]
    assert URL(held).query["variant"] == "original"
    started = await api.session.get(held, headers={"Range": "bytes=0-"})
    assert started.status == 206 and await started.read() == wav
    original_tag = started.headers["ETag"]

    await make_client(settings.changed({"job_workers": 1, "job_poll_seconds": 0.2}))

    async def ready():
        clip = await (await api.get(f"/clips/{created['id']}")).json()
        return clip if clip["preview"]["status"] != "pending" else None

    clip = await wait_until(ready, "the preview", seconds=30, interval=0.1)
    assert clip["preview"]["status"] == "ready", clip["preview"]

    # The player seeks with the URL it holds (a plain Range, as Chromium
    # sends): the original's bytes at that offset, not the preview's.
    seek = await api.session.get(held, headers={"Range": "bytes=100000-"})
    assert seek.status == 206 and seek.content_type == "audio/wav"
    assert await seek.read() == wav[100000:]

    # The clip now hands out the plain URL: the preview, here too, though
    # this process had kept the row from before the preview was ready.
    plain = clip["stream_url"]
    assert URL(plain).query == {} and URL(plain).path == URL(held).path
    preview = await api.session.get(plain)
    assert preview.status == 200 and preview.content_type == "audio/mpeg"
    mp3 = await preview.read()
    assert len(mp3) == clip["preview"]["size_bytes"]
    assert preview.headers["ETag"] != original_tag

    # Validators of the original never match the preview: If-Range gets the
    # whole preview (no splice), If-None-Match the preview (no 304).
    resumed = await api.session.get(
        plain, headers={"Range": "bytes=1000-", "If-Range": original_tag}
    )
    assert resumed.status == 200 and await resumed.read() == mp3
    revalidated = await api.session.get(plain, headers={"If-None-Match": original_tag})
    assert revalidated.status == 200 and await revalidated.read() == mp3


async def test_a_signed_stream_url_names_the_original_while_the_preview_is_pending(
    settings, make_client
):
    keyed = settings.changed(
        {
            "api_keys": f"read:{READ_KEY},write:{WRITE_KEY}",
            "stream_url_secret": ("stream-secret-0123456789",),
        }
    )
    client = await make_client(keyed)
    wav = stereo_wav(2.0)
    clip = await upload(client, wav, {"Authorization": f"Bearer {WRITE_KEY}"})
    url = URL(clip["stream_url"])
    assert url.query["variant"] == "original" and {"exp", "sig"} <= set(url.query)
    stream = await client.session.get(url)  # no key: the signature is the permission
    assert stream.status == 200 and await stream.read() == wav
