"""Light previews and waveform peaks, made by jobs against the real app and
PostgreSQL: an uploaded WAV gets an MP3 preview that stream_url plays (the
original stays one `?variant=original` away, byte for byte), every clip
gets audiowaveform peaks (remote ones fetched once from their origin), and
a file that cannot be decoded fails its preview with a reason while the
clip keeps playing.
"""

import array
import io
import math
import os
import struct
import wave

import lameenc
import mutagen
import pytest
from aiohttp import web

from db import jobs as queue
from schemas.peaks import MAX_LENGTH
from tests.audio import stereo_wav
from tests.support import PROBLEM, media_files, read_problem, upload_form, wait_until

SECONDS = 20.0
RATE = 44100


def forged_flac(seconds: int = 5, rate: int = RATE) -> bytes:
    """A FLAC whose header (STREAMINFO) is sound, so the upload accepts it,
    and whose frames are noise: no decoder gets audio out of it."""
    packed = (rate << 44) | (1 << 41) | (15 << 36) | (rate * seconds)  # stereo, 16-bit
    info = struct.pack(">HH", 4096, 4096) + bytes(6) + packed.to_bytes(8, "big") + bytes(16)
    return b"fLaC" + bytes([0x80]) + len(info).to_bytes(3, "big") + info + os.urandom(200_000)


def crc(data: bytes, width: int, poly: int) -> int:
    """FLAC's frame checksums: CRC-8 (poly 0x07) and CRC-16 (poly 0x8005)."""
    top, mask, value = 1 << (width - 1), (1 << width) - 1, 0
    for byte in data:
        value ^= byte << (width - 8)
        for _ in range(8):
            value = ((value << 1) ^ poly if value & top else value << 1) & mask
    return value


def lying_flac(announced: int, blocks: int, rate: int = RATE) -> bytes:
    """A valid mono 16-bit FLAC of `blocks` frames of 4096 equal samples
    (a quiet hum, about 12 bytes a frame), whose STREAMINFO announces
    `announced` seconds: what the upload measures."""
    packed = (rate << 44) | (15 << 36) | (rate * announced)  # mono, 16-bit
    info = struct.pack(">HH", 4096, 4096) + bytes(6) + packed.to_bytes(8, "big") + bytes(16)
    # STREAMINFO, then 256 KiB of PADDING (as taggers leave room): a file
    # heavier than the preview of its announced seconds.
    padding = bytes([0x81]) + (256 * 1024).to_bytes(3, "big") + bytes(256 * 1024)
    frames = [b"fLaC", bytes([0x00]) + len(info).to_bytes(3, "big") + info + padding]
    for number in range(blocks):  # below 2^11: two bytes of FLAC's UTF-8 coding
        coded = (
            bytes([number]) if number < 0x80 else bytes([0xC0 | number >> 6, 0x80 | number & 0x3F])
        )
        # Fixed blocks of 4096 at 44.1 kHz, mono 16-bit; one CONSTANT subframe.
        head = b"\xff\xf8\xc9\x08" + coded
        frame = head + bytes([crc(head, 8, 0x07)]) + b"\x00" + (1000).to_bytes(2, "big")
        frames.append(frame + crc(frame, 16, 0x8005).to_bytes(2, "big"))
    return b"".join(frames)


@pytest.fixture(scope="module")
def wav() -> bytes:
    return stereo_wav()


@pytest.fixture
def settings(settings):
    return settings.changed({"job_workers": 1, "job_poll_seconds": 0.2})


async def clip_when(client, clip_id: int, done, what: str) -> dict:
    """The clip's JSON once `done(clip)` holds (a job ended), within 30 s."""

    async def clip():
        body = await (await client.get(f"/clips/{clip_id}")).json()
        return body if done(body) else None

    return await wait_until(clip, what, seconds=30, interval=0.1)


async def upload(client, audio: bytes, filename: str) -> dict:
    response = await client.post("/clips", data=upload_form(io.BytesIO(audio), filename))
    assert response.status == 201, await response.text()
    return await response.json()


def check_audiowaveform(peaks: dict, seconds: float) -> None:
    """audiowaveform's JSON format, version 2, as its readers check it."""
    assert set(peaks) == {
        "version", "channels", "sample_rate", "samples_per_pixel", "bits", "length", "data",
    }  # fmt: skip
    assert peaks["version"] == 2 and peaks["channels"] == 1 and peaks["bits"] == 8
    assert len(peaks["data"]) == 2 * peaks["length"]
    assert all(-128 <= value <= 127 for value in peaks["data"])
    pairs = list(zip(peaks["data"][0::2], peaks["data"][1::2], strict=True))
    assert all(low <= high for low, high in pairs)
    frames = seconds * peaks["sample_rate"]
    assert peaks["length"] == math.ceil(frames / peaks["samples_per_pixel"])


@pytest.mark.parametrize("media_store", ["local", "s3"], indirect=True)
async def test_an_uploaded_wav_plays_as_a_light_preview(client, wav, plays, stored, media_store):
    created = await upload(client, wav, "take.wav")
    assert created["preview"] == {
        "status": "pending", "content_type": None, "size_bytes": None, "bitrate": None,
        "reason": None,
    }  # fmt: skip
    clip = await clip_when(
        client, created["id"], lambda c: c["preview"]["status"] != "pending", "a preview"
    )
    preview = clip["preview"]
    assert preview["status"] == "ready", preview
    assert preview["content_type"] == "audio/mpeg" and preview["bitrate"] == 128_000
    assert preview["size_bytes"] <= len(wav) / 4

    stream = await client.session.get(clip["stream_url"])
    assert stream.status == 200 and stream.content_type == "audio/mpeg"
    mp3 = await stream.read()
    assert len(mp3) == preview["size_bytes"]
    assert mutagen.File(io.BytesIO(mp3)).info.length == pytest.approx(SECONDS, abs=0.1)

    original = await client.session.get(clip["stream_url"] + "?variant=original")
    assert original.status == 200 and original.content_type == "audio/wav"
    assert await original.read() == wav

    # The preview streams as any stored clip does: ranges, validators, no caching.
    part = await client.session.get(clip["stream_url"], headers={"Range": "bytes=1000-1999"})
    assert part.status == 206 and await part.read() == mp3[1000:2000]
    assert part.headers["Cache-Control"] == "no-store"
    validator = {"If-None-Match": stream.headers["ETag"]}
    again = await client.session.get(clip["stream_url"], headers=validator)
    assert again.status == 304
    assert stream.headers["ETag"] != original.headers["ETag"]

    await plays.flush()  # two whole listens, one of each variant; the rest are not plays
    assert (await (await client.get(f"/clips/{clip['id']}")).json())["play_count"] == 2

    # Deleted, the clip takes its original and its preview with it (from
    # MEDIA_DIR, or from the bucket with MEDIA_STORE=s3).
    held = stored()
    assert (await client.delete(f"/clips/{clip['id']}")).status == 204
    assert len(held - stored()) == 2


async def test_an_unknown_variant_is_a_problem(client, make_clip):
    clip_id = await make_clip(media_path="tune.wav", content_type="audio/wav")
    response = await client.get(f"/clips/{clip_id}/stream?variant=flac")
    problem = await read_problem(response, 400)
    assert problem["errors"] == [{"field": "variant", "reason": "one of preview, original"}]


async def test_peaks_follow_the_audiowaveform_format(client, wav):
    clip = await upload(client, wav, "take.wav")
    response = await client.session.get(clip["peaks_url"])
    if response.status == 404:  # its job has not run yet: said so, with when to ask again
        problem = await read_problem(response, 404)
        assert "not computed yet" in problem["detail"] and response.headers["Retry-After"]

    async def peaks():
        response = await client.session.get(clip["peaks_url"])
        return response if response.status == 200 else None

    response = await wait_until(peaks, "the peaks", seconds=30, interval=0.1)
    body = await response.json()
    check_audiowaveform(body, SECONDS)
    assert body["sample_rate"] == RATE and body["samples_per_pixel"] == 256
    # The tone swells and fades each second: loud pixels and quiet ones.
    highs = body["data"][1::2]
    assert max(highs) >= 40 and min(highs) <= 15

    assert response.headers["Cache-Control"] == "no-cache"
    etag = response.headers["ETag"]
    revalidated = await client.session.get(clip["peaks_url"], headers={"If-None-Match": etag})
    assert revalidated.status == 304 and revalidated.headers["ETag"] == etag

    coarse = await (await client.session.get(clip["peaks_url"] + "?pixels_per_second=10")).json()
    check_audiowaveform(coarse, SECONDS)
    assert coarse["samples_per_pixel"] == 17 * 256  # 44100 / 10 is nearest 17 × 256
    assert max(coarse["data"][1::2]) == max(highs)
    exact = await (await client.session.get(clip["peaks_url"] + "?samples_per_pixel=1024")).json()
    check_audiowaveform(exact, SECONDS)
    assert exact["samples_per_pixel"] == 1024


@pytest.mark.parametrize(
    ("query", "fields"),
    [
        ("samples_per_pixel=300", ["samples_per_pixel"]),
        ("samples_per_pixel=0", ["samples_per_pixel"]),
        ("pixels_per_second=1000", ["pixels_per_second"]),
        ("pixels_per_second=abc", ["pixels_per_second"]),
        ("pixels_per_second=10&samples_per_pixel=512", ["body"]),
        ("zoom=2", ["zoom"]),
    ],
)
async def test_peaks_parameters_out_of_bounds_are_problems(client, make_clip, query, fields):
    clip_id = await make_clip(media_path="tune.wav", content_type="audio/wav")
    response = await client.get(f"/clips/{clip_id}/peaks?{query}")
    problem = await read_problem(response, 400)
    assert [e["field"] for e in problem["errors"]] == fields, problem


async def test_peaks_of_an_unknown_clip_are_404(client):
    response = await client.get("/clips/999999/peaks")
    assert response.status == 404 and response.content_type == PROBLEM


async def test_a_remote_clip_gets_peaks_from_one_fetch(client, aiohttp_server, audio_dir, pool):
    fetched = []

    async def tune(request: web.Request) -> web.FileResponse:
        fetched.append(request.method)
        return web.FileResponse(audio_dir / "tune.wav")

    async def noise(request: web.Request) -> web.Response:
        return web.Response(body=os.urandom(50_000))

    origin = web.Application()
    origin.router.add_get("/tune.wav", tune)
    origin.router.add_get("/noise.mp3", noise)
    server = await aiohttp_server(origin)
    response = await client.post(
        "/clips",
        json={
            "title": "Remote tune", "genre": "rock", "duration_seconds": 20.0,
            "audio_url": str(server.make_url("/tune.wav")),
        },
    )  # fmt: skip
    assert response.status == 201, await response.text()
    clip = await response.json()
    assert clip["preview"] is None  # remote audio streams from its origin as it is

    async def peaks():
        response = await client.session.get(clip["peaks_url"])
        return await response.json() if response.status == 200 else None

    body = await wait_until(
        peaks,
        "the remote clip's peaks",
        seconds=30,
        interval=0.1,
        details=lambda: str(fetched),
    )
    check_audiowaveform(body, 20.0)
    assert body["sample_rate"] == 22050  # tune.wav's own rate
    assert fetched == ["GET"]
    assert [r["state"] for r in await queue.job_states(pool, clip["id"])] == ["done"]

    # Other audio, other waveform: the old peaks go, new ones are computed
    # (here from noise, which no decoder reads).
    changed = await client.patch(
        f"/clips/{clip['id']}", json={"audio_url": str(server.make_url("/noise.mp3"))}
    )
    assert changed.status == 200

    async def failed():
        states = await queue.job_states(pool, clip["id"])
        return states[0]["state"] == "failed"

    await wait_until(failed, "the new peaks job to end", seconds=30, interval=0.1)
    problem = await read_problem(await client.session.get(clip["peaks_url"]), 404)
    assert "could not be computed" in problem["detail"]


async def test_a_corrupt_file_fails_its_jobs_and_the_clip_still_plays(client, pool):
    flac = forged_flac()
    created = await upload(client, flac, "noise.flac")
    clip = await clip_when(
        client, created["id"], lambda c: c["preview"]["status"] != "pending", "a failed preview"
    )
    assert clip["preview"]["status"] == "failed"
    assert "damaged" in clip["preview"]["reason"], clip["preview"]
    assert clip["preview"]["size_bytes"] is None

    stream = await client.session.get(clip["stream_url"])
    assert stream.status == 200 and stream.content_type == "audio/flac"
    assert await stream.read() == flac

    async def peaks_failed():
        states = {r["kind"]: r["state"] for r in await queue.job_states(pool, clip["id"])}
        return states["peaks"] == "failed"

    await wait_until(peaks_failed, "the peaks job to fail", seconds=30, interval=0.1)
    problem = await read_problem(await client.session.get(clip["peaks_url"]), 404)
    assert "could not be computed" in problem["detail"] and "damaged" in problem["detail"]
    # Failing at once: the file cannot change, so it was tried once.
    assert [r["attempts"] for r in await queue.job_states(pool, clip["id"])] == [1, 1]


def low_bitrate_mp3(seconds: int = 20, rate: int = 8000) -> bytes:
    """A mono MP3 at 8 kbit/s (a voice memo): lighter than any preview. An
    empty ID3v2 tag ahead, as taggers write, by which mutagen knows it."""
    samples = array.array(
        "h", (int(8000 * math.sin(2 * math.pi * 440 * n / rate)) for n in range(seconds * rate))
    )
    encoder = lameenc.Encoder()
    encoder.set_bit_rate(8)
    encoder.set_in_sample_rate(rate)
    encoder.set_channels(1)
    tag = b"ID3\x03\x00\x00" + bytes(4)
    return tag + bytes(encoder.encode(samples.tobytes())) + bytes(encoder.flush())


async def test_a_preview_heavier_than_the_original_is_not_made(client, media_dir):
    mp3 = low_bitrate_mp3()
    before = media_files(media_dir)
    created = await upload(client, mp3, "memo.mp3")
    clip = await clip_when(
        client, created["id"], lambda c: c["preview"]["status"] != "pending", "the preview's end"
    )
    # A 64 kbit/s preview of 8 kbit/s audio would be 8 times its size.
    assert clip["preview"]["status"] == "failed"
    assert "no lighter than the original" in clip["preview"]["reason"], clip["preview"]
    [original] = media_files(media_dir) - before  # no preview, no partial file left behind
    assert (media_dir / original).read_bytes() == mp3
    stream = await client.session.get(clip["stream_url"])
    assert stream.status == 200 and await stream.read() == mp3


async def test_a_long_clips_waveform_is_served_within_bounds(client, make_clip, pool):
    # 2^18 + 10 pixels at 256 samples per pixel: 26 minutes at 44.1 kHz.
    pixels = MAX_LENGTH + 10
    clip_id = await make_clip(media_path="tune.wav", content_type="audio/wav")
    await pool.execute(
        "INSERT INTO clip_peaks (clip_id, sample_rate, samples_per_pixel, data)"
        " VALUES ($1, 44100, 256, $2)",
        clip_id,
        bytes([0x80, 0x7F]) * pixels,
    )
    peaks = await (await client.get(f"/clips/{clip_id}/peaks")).json()
    # Without a zoom: the finest one that fits, 2 stored pixels to one.
    assert peaks["samples_per_pixel"] == 512 and peaks["length"] == math.ceil(pixels / 2)
    for query, field in [
        ("samples_per_pixel=256", "samples_per_pixel"),
        ("pixels_per_second=200", "pixels_per_second"),
    ]:
        response = await client.get(f"/clips/{clip_id}/peaks?{query}")
        problem = await read_problem(response, 400)
        [error] = problem["errors"]
        assert error["field"] == field and "samples_per_pixel 512" in error["reason"], problem
    response = await client.get(f"/clips/{clip_id}/peaks?samples_per_pixel=512")
    assert response.status == 200 and (await response.json())["length"] <= MAX_LENGTH


async def test_a_file_decoding_longer_than_it_announces_fails_its_jobs(client, pool):
    # 10 s announced ahead of 120 s of frames: the upload measures 10 s.
    flac = lying_flac(announced=10, blocks=1292)
    created = await upload(client, flac, "liar.flac")
    assert created["duration_seconds"] == 10.0
    clip = await clip_when(
        client, created["id"], lambda c: c["preview"]["status"] != "pending", "the preview's end"
    )
    assert clip["preview"]["status"] == "failed"
    assert "decodes longer than the 10.0 s it announces" in clip["preview"]["reason"]

    async def peaks_ended():
        states = {r["kind"]: r["state"] for r in await queue.job_states(pool, clip["id"])}
        return states["peaks"] in ("done", "failed")

    await wait_until(peaks_ended, "the peaks job to end", seconds=30, interval=0.1)
    problem = await read_problem(await client.session.get(clip["peaks_url"]), 404)
    assert "decodes longer" in problem["detail"]
    stream = await client.session.get(clip["stream_url"])
    assert stream.status == 200 and await stream.read() == flac


async def test_peaks_keep_the_audios_own_sample_rate(client):
    # Ten minutes of an 8-bit mono WAV at 100 Hz: 60 KB. Its peaks are of
    # its 60,000 samples, as audiowaveform gives them, not of 28.8 million
    # made up by resampling to 48 kHz (a 1 Hz file announcing 16 hours
    # kept a job process busy for minutes).
    out = io.BytesIO()
    with wave.open(out, "wb") as audio:
        audio.setnchannels(1)
        audio.setsampwidth(1)
        audio.setframerate(100)
        audio.writeframes(bytes(128 + (n % 50) for n in range(60_000)))
    created = await upload(client, out.getvalue(), "slow.wav")

    async def peaks():
        response = await client.session.get(created["peaks_url"])
        return await response.json() if response.status == 200 else None

    body = await wait_until(peaks, "the peaks", seconds=30, interval=0.1)
    assert body["sample_rate"] == 100 and body["samples_per_pixel"] == 256
    check_audiowaveform(body, 600.0)


async def test_a_stored_clips_measured_duration_cannot_be_patched(client, wav):
    created = await upload(client, wav, "take.wav")
    # The same value, sent back with the rest of the clip, is no change.
    same = await client.patch(f"/clips/{created['id']}", json={"duration_seconds": SECONDS})
    assert same.status == 200
    changed = await client.patch(f"/clips/{created['id']}", json={"duration_seconds": 5.0})
    problem = await read_problem(changed, 400)
    assert problem["errors"][0]["field"] == "duration_seconds"
    clip = await clip_when(
        client, created["id"], lambda c: c["preview"]["status"] != "pending", "a preview"
    )
    # Its jobs judged the audio against the measured 20 s, not a typed 5 s.
    assert clip["duration_seconds"] == SECONDS and clip["preview"]["status"] == "ready"
