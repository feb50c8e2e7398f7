"""Uploading audio: what the bytes are decides, a refused upload leaves
no file and no row, and no client can hold the server with one: stalled
bodies, endless forms, files crafted to keep the parser busy or crash it,
and too many uploads at once are all refused.

Every test runs against both media stores: MEDIA_DIR, and a bucket of the
local S3 server (`stored` lists what either holds)."""

import asyncio
import contextlib
import hashlib
import io
import logging
import os
import struct
import wave

import pytest

from db import POOL
from streaming.uploads import FORM_ALLOWANCE, MAX_PARTS, UPLOADS
from tests.scrape import metric, scrape
from tests.support import (
    MP3,
    MP3_BITRATE,
    MP3_SECONDS,
    clip_count,
    error_fields,
    raw_form,
    raw_upload_head,
    read_problem,
    read_status,
    send_slowly,
    upload_form,
    wait_until,
)

pytestmark = pytest.mark.parametrize("media_store", ["local", "s3"], indirect=True)


def slow_wav(chunks: int) -> bytes:
    """A valid WAV padded with `chunks` empty chunks: mutagen walks them one
    by one in Python (about 100,000 a second here)."""
    fmt = b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, 8000, 16000, 2, 16)
    body = b"WAVE" + fmt + b"junk\0\0\0\0" * chunks + b"data" + struct.pack("<I", 2) + b"\0\0"
    return b"RIFF" + struct.pack("<I", len(body)) + body


def nested_mp4(depth: int) -> bytes:
    """An MP4 whose atoms nest `depth` deep: mutagen recurses into each."""
    atoms = b""
    for _ in range(depth):
        atoms = struct.pack(">I", 8 + len(atoms)) + b"moov" + atoms
    return struct.pack(">I", 16) + b"ftypM4A \0\0\0\0" + atoms


def adts_aac(seconds: float, rate: int = 44100) -> bytes:
    """Raw AAC-LC in ADTS frames (no container, no tag: what `.aac` files
    and HLS audio segments hold), mono, silent. Each frame is a 7-byte ADTS
    header (ISO/IEC 14496-3 §1.A.2: MPEG-4, no CRC, LC, 44.1 kHz, one
    channel) and a 4-byte raw_data_block: one channel element with global
    gain 160, a long window and no scale factor band, then ID_END; 1,024
    samples of silence. FFmpeg's decoder (through PyAV 18.1) reads 20 s of
    them as 861 frames of LC mono, 19.99 s, every sample 0."""
    block = bytes([0x01, 0x40, 0x20, 0x07])
    length = 7 + len(block)
    fields = (
        (0xFFF, 12), (0, 1), (0, 2), (1, 1),  # sync, MPEG-4, layer 0, no CRC
        (1, 2), (4, 4), (0, 1), (1, 3),  # AAC LC, 44.1 kHz, private, mono
        (0, 4), (length, 13), (0x7FF, 11), (0, 2),  # flags, frame length, VBR, 1 block
    )  # fmt: skip
    header = 0
    for value, bits in fields:
        header = header << bits | value
    return (header.to_bytes(7, "big") + block) * int(seconds * rate / 1024)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_an_mp3_upload_becomes_a_playable_clip(client, stored):
    before = stored()
    response = await client.post("/clips", data=upload_form(MP3, description="Mine"))
    assert response.status == 201, await response.text()
    clip = await response.json()
    assert clip["content_type"] == "audio/mpeg"
    assert clip["audio_url"] is None
    assert clip["size_bytes"] == len(MP3)
    assert clip["sha256"] == hashlib.sha256(MP3).hexdigest()
    assert clip["duration_seconds"] == pytest.approx(MP3_SECONDS, abs=0.1)  # read, not trusted
    assert clip["bitrate"] == MP3_BITRATE
    (name,) = stored() - before
    assert name.endswith(".mp3") and name != "song.mp3"
    stream = await client.get(f"/clips/{clip['id']}/stream")
    assert await stream.read() == MP3


async def test_a_wav_upload_is_recognised_by_its_bytes(client, audio_dir):
    wav = (audio_dir / "tune.wav").read_bytes()
    response = await client.post("/clips", data=upload_form(wav, filename="song.mp3"))
    assert response.status == 201
    clip = await response.json()
    assert clip["content_type"] == "audio/wav"
    assert clip["duration_seconds"] == pytest.approx(20.0, abs=0.01)


async def test_a_raw_adts_aac_upload_is_read_by_its_bytes(client, stored):
    # mutagen.File knows ADTS only by a `.aac` name, which the file being
    # received does not have: the sniffed format picks the reader instead.
    aac = adts_aac(20.0)
    before = stored()
    response = await client.post("/clips", data=upload_form(aac, filename="take"))
    assert response.status == 201, await response.text()
    clip = await response.json()
    assert clip["content_type"] == "audio/aac"
    assert clip["duration_seconds"] == pytest.approx(20.0, abs=0.05)
    (name,) = stored() - before
    assert name.endswith(".aac")
    stream = await client.get(f"/clips/{clip['id']}/stream")
    assert stream.content_type == "audio/aac" and await stream.read() == aac


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        (b"just some text, honestly\n" * 100, 415),  # a text file named .mp3
        (b"\x00\x01\x02\x03" * 1000, 415),
        (b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\x00" * 50, 422),  # truncated: a tag, no audio
        (MP3[:300], 422),  # truncated: the first frames of a real MP3
        (nested_mp4(3000), 422),  # mutagen raises RecursionError
        (b"\0\0\0\x10ftypM4A \0\0\0\0" + b"\xff" * 500, 422),
        (b"RIFF\xff\xff\xff\xffWAVE" + b"\xff" * 500, 422),
        (b"OggS" + b"\xff" * 500, 422),
        (b"fLaC" + b"\xff" * 500, 422),
        (b"\xff\xf1" + b"\xff" * 500, 422),  # ADTS sync, then nonsense
    ],
    ids=[
        "text",
        "binary",
        "id3-tag-only",
        "truncated-mp3",
        "deeply-nested-mp4",
        "garbage-mp4",
        "garbage-wav",
        "garbage-ogg",
        "garbage-flac",
        "garbage-aac",
    ],
)
async def test_what_is_not_audio_is_refused_and_leaves_nothing(
    client, pool, stored, payload, status
):
    before = stored(), await clip_count(pool)
    await read_problem(await client.post("/clips", data=upload_form(payload)), status)
    assert (stored(), await clip_count(pool)) == before


async def test_an_upload_over_the_cap_is_413(settings, make_client, stored):
    cap = 16 * 1024
    assert len(MP3) > cap
    client = await make_client(settings.changed({"max_upload_bytes": cap}))
    before = stored()
    await read_problem(await client.post("/clips", data=upload_form(MP3)), 413)
    assert stored() == before
    assert await clip_count(client.server.app[POOL]) == 0


async def test_a_body_declared_past_the_cap_is_413_before_the_disk_is_asked(client, stored, caplog):
    """A Content-Length no upload may have (the cap, plus room for the
    form's other fields) is refused before a byte is read: never a 507
    "media store is full", its ERROR log and its storage error metric,
    which anyone able to write could otherwise raise at will."""
    before = stored()
    reader, writer = await asyncio.open_connection(client.host, client.port)
    with caplog.at_level(logging.WARNING):
        writer.write(raw_upload_head(1_000_000_000_000) + MP3[:1000])
        try:
            async with asyncio.timeout(10):
                status, rest = await read_status(reader)
                rest += await reader.read(2000)
        finally:
            writer.close()
    assert status == 413
    assert b"MAX_UPLOAD_BYTES" in rest
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert metric(await scrape(client), "clips_storage_errors_total", operation="write") == 0
    assert stored() == before
    assert await clip_count(client.server.app[POOL]) == 0


async def test_a_body_declared_within_the_cap_and_its_form_is_received(client, stored):
    """The allowance covers the form around the file: an upload of exactly
    MAX_UPLOAD_BYTES with its fields is not refused for its Content-Length."""
    before = stored()
    cap = client.server.app[UPLOADS].limit
    form, tail = raw_form("atcap")
    declared = len(form) + cap + len(tail)
    assert cap < declared <= cap + FORM_ALLOWANCE
    _, writer = await asyncio.open_connection(client.host, client.port)
    head = (
        "POST /clips HTTP/1.1\r\nHost: x\r\n"
        "Content-Type: multipart/form-data; boundary=atcap\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    ).encode()
    writer.write(head + form + MP3[:1000])
    try:
        await wait_until(lambda: stored() - before, "the upload being received")
    finally:
        writer.close()
    await wait_until(lambda: stored() == before, "the aborted upload removed")


@pytest.mark.parametrize(
    ("fields", "wrong"),
    [({"genre": "Not A Genre"}, ["genre"]), ({"title": ""}, ["title"]), ({"extra": "x"}, [])],
)
async def test_bad_form_fields_leave_no_file(client, stored, fields, wrong):
    before = stored()
    response = await client.post("/clips", data=upload_form(MP3, **fields))
    body = await read_problem(response, 400)
    assert error_fields(body) == wrong
    assert stored() == before


async def test_missing_file_and_malformed_multipart_are_400(client, pool):
    await read_problem(await client.post("/clips", data=upload_form(None)), 400)
    garbage = await client.post(
        "/clips",
        data=b"--xyz\r\nnot a header\r\n\r\nbody",
        headers={"Content-Type": "multipart/form-data; boundary=xyz"},
    )
    await read_problem(garbage, 400)
    assert await clip_count(pool) == 0


async def test_file_names_never_come_from_the_client(client, media_dir, stored, tmp_path):
    response = await client.post("/clips", data=upload_form(MP3, filename="../../../escape.mp3"))
    assert response.status == 201
    assert not (media_dir.parent / "escape.mp3").exists()
    assert not any(p.name == "escape.mp3" for p in tmp_path.rglob("*"))


async def test_an_aborted_upload_leaves_no_file_and_no_row(client, pool, stored):
    before = stored()
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
    await wait_until(lambda: stored() - before, "the partial upload on disk")
    writer.close()  # ...and the client goes away mid-file
    await wait_until(lambda: stored() == before, "the partial upload removed")
    assert await clip_count(pool) == 0


async def test_20_concurrent_uploads(client, pool, stored):
    before = stored()
    responses = await asyncio.gather(
        *(client.post("/clips", data=upload_form(MP3, title=f"Upload {i}")) for i in range(20))
    )
    assert [r.status for r in responses] == [201] * 20
    clips = [await r.json() for r in responses]
    assert len({c["id"] for c in clips}) == 20
    assert len(stored() - before) == 20
    assert await clip_count(pool) == 20


@pytest.mark.parametrize("trickle", [None, 0.05], ids=["stalled", "trickling"])
async def test_an_upload_that_stalls_or_trickles_is_cut_with_408(
    settings, make_client, stored, trickle
):
    """Every 64 KiB must arrive within UPLOAD_IDLE_SECONDS: a body that sends
    nothing more is cut, and so is one that sends a byte far more often
    than that (a deadline per read alone would never cut it)."""
    client = await make_client(settings.changed({"upload_idle_seconds": 0.5}))
    before = stored()
    head = raw_upload_head(len(MP3))
    status, rest = await send_slowly(client, head, MP3, first=1000, trickle=trickle)
    assert status == 408
    assert b"UPLOAD_IDLE_SECONDS" in rest
    await wait_until(lambda: stored() == before, "the partial upload removed")
    assert await clip_count(client.server.app[POOL]) == 0


async def test_an_upload_paced_to_last_is_cut_at_its_total_deadline_with_408(
    settings, make_client, stored
):
    """A body that keeps every 64 KiB within UPLOAD_IDLE_SECONDS still gets
    UPLOAD_MAX_SECONDS in all: then 408, its partial file removed and its
    UPLOAD_MAX_CONCURRENT place free for the next upload."""
    client = await make_client(
        settings.changed({"upload_max_seconds": 1.0, "upload_max_concurrent": 1})
    )
    uploads = client.server.app[UPLOADS]
    assert uploads.idle >= 30  # the pace below never stalls: only the total deadline cuts
    before = stored()
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(raw_upload_head(10 * 1024 * 1024) + MP3)

    async def keep_pace() -> None:
        while True:
            await asyncio.sleep(0.05)  # the client's pace: 16 KiB every 50 ms
            writer.write(bytes(16 * 1024))

    pacing = asyncio.create_task(keep_pace())
    try:
        await wait_until(lambda: stored() - before, "the upload being received")
        async with asyncio.timeout(10):
            status, rest = await read_status(reader)
            rest += await reader.read(2000)
    finally:
        pacing.cancel()
        writer.close()
    assert status == 408
    assert b"UPLOAD_MAX_SECONDS" in rest
    await wait_until(lambda: stored() == before, "the partial upload removed")
    assert uploads.active == 0
    assert (await client.post("/clips", data=upload_form(MP3))).status == 201


async def test_a_form_of_thousands_of_parts_is_400_naming_the_cap(client, stored):
    before = stored()
    boundary = "manyparts"
    part = f'--{boundary}\r\nContent-Disposition: form-data; name="title"\r\n\r\nx\r\n'
    body = (part * 20_000 + f"--{boundary}--\r\n").encode()
    response = await client.post(
        "/clips",
        data=io.BytesIO(body),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert f"more than {MAX_PARTS} parts" in (await read_problem(response, 400))["detail"]
    assert stored() == before


async def test_a_slow_parse_never_blocks_other_requests(settings, make_client, media_dir, stored):
    """While a file that takes the parser seconds is read, the same server
    answers other requests: each completes before the parse does."""
    client = await make_client(settings.changed({"upload_parse_seconds": 60.0}))
    wav = slow_wav(300_000)
    before = stored()
    upload = asyncio.create_task(
        client.post("/clips", data=upload_form(io.BytesIO(wav), "slow.wav"))
    )

    def received() -> bool:  # the whole file is on disk: its parse starts
        sizes = []
        for name in stored() - before:
            with contextlib.suppress(FileNotFoundError):  # renamed meanwhile
                sizes.append((media_dir / name).stat().st_size)
        return len(wav) in sizes

    await wait_until(received, "the upload received", seconds=30)
    for _ in range(5):
        assert (await client.get("/healthz")).status == 200
        assert not upload.done(), "the parse finished first: it was not slow enough to tell"
    response = await upload
    assert response.status == 201, await response.text()
    workers = client.server.app[UPLOADS].reader.pids()
    assert workers and os.getpid() not in workers  # read in other processes


async def test_a_parse_over_its_budget_is_422_and_its_worker_is_replaced(
    settings, make_client, stored
):
    client = await make_client(
        settings.changed({"upload_parse_seconds": 0.3, "upload_parse_workers": 1})
    )
    reader = client.server.app[UPLOADS].reader
    assert (await client.post("/clips", data=upload_form(MP3))).status == 201
    (first,) = reader.pids()
    before = stored()

    response = await client.post(
        "/clips", data=upload_form(io.BytesIO(slow_wav(1_000_000)), "slow.wav")
    )

    assert "UPLOAD_PARSE_SECONDS" in (await read_problem(response, 422))["detail"]
    assert stored() == before
    await wait_until(lambda: not alive(first), "the overrunning worker killed")
    # A fresh worker reads the next upload.
    assert (await client.post("/clips", data=upload_form(MP3))).status == 201
    assert reader.pids() and first not in reader.pids()


async def test_uploads_past_the_cap_are_503_with_retry_after(settings, make_client, stored):
    client = await make_client(settings.changed({"upload_max_concurrent": 1}))
    before = stored()
    head = raw_upload_head(len(MP3))
    _, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(head + MP3[:1000])  # one upload in progress, holding the only place
    await wait_until(lambda: stored() - before, "the first upload on disk")

    response = await client.post("/clips", data=upload_form(MP3))

    body = await read_problem(response, 503)
    assert "UPLOAD_MAX_CONCURRENT" in body["detail"]
    assert response.headers["Retry-After"].isdigit()
    assert len(stored() - before) == 1  # the refused one wrote nothing
    writer.close()  # the first upload ends: its place is free again
    await wait_until(lambda: stored() == before, "the first upload removed")
    assert (await client.post("/clips", data=upload_form(MP3))).status == 201


def wav(rate: int, channels: int, width: int, frames: int) -> bytes:
    """A well-formed WAV whose header says what it likes."""
    out = io.BytesIO()
    with wave.open(out, "wb") as audio:
        audio.setnchannels(channels)
        audio.setsampwidth(width)
        audio.setframerate(rate)
        audio.writeframes(b"\x80" * (frames * channels * width))
    return out.getvalue()


@pytest.mark.parametrize(
    ("payload", "named"),
    [
        (wav(1, 1, 1, 100_000), "86400"),  # 100,000 s at 1 Hz: longer than a day
        (wav(400_000_000, 2, 2, 1000), "bitrate"),  # 12.8 Gbit/s
    ],
    ids=["longer-than-a-day", "impossible-bitrate"],
)
async def test_audio_announcing_what_the_catalogue_cannot_hold_is_422(
    client, pool, stored, payload, named
):
    """Not a database error (500) after the fact: refused, nothing kept."""
    before = stored(), await clip_count(pool)
    body = await read_problem(await client.post("/clips", data=upload_form(payload)), 422)
    assert named in body["detail"]
    assert (stored(), await clip_count(pool)) == before
    text = await (await client.get("/metrics")).text()
    assert 'clips_db_errors_total{kind="query"} 0.0' in text
