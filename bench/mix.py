"""The soak's load, every part running at once until told to stop: API
reads and 500 KiB streams through wrk, slow listeners who come and go,
Range seeks, and new clips (remote, and uploaded WAVs).

Concurrency is moderate on purpose: the soak looks for what wears out over
time, not for peak throughput (that is `make bench`).
"""

import asyncio
import contextlib
import io
import os
import random
import time
import wave
from dataclasses import dataclass, field

import aiohttp

from bench import load
from bench.catalogue import SMALL
from bench.readers import SlowReaders, Tally
from bench.rig import Rig

API_CONNECTIONS = 4  # per path
STREAM_CONNECTIONS = 8  # per source
# wrk starts again every round: new connections now and then, as real
# clients have, and a throughput figure per round.
ROUND_SECONDS = 60.0
# Up to 100 slow listeners at a time, in groups that each read for a few
# seconds, leave mid-stream (the 5 MiB clip lasts 320 s at their pace) and
# come back; the groups are staggered so listeners leave and arrive all along.
READER_GROUPS = 4
READERS_PER_GROUP = 25
HOLD_SECONDS = (3.0, 15.0)
# A seek is a short download; the pause keeps two seekers from taking the
# load generator's core away from wrk.
SEEK_PAUSE = 0.05
CREATE_EVERY = 1.0  # seconds
UPLOAD_EVERY = 5  # every fifth new clip is an upload, the others remote
GENRE = "soak"
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=30)


@dataclass
class Traffic:
    """One part of the mix, over the whole soak, as the client saw it."""

    name: str
    requests: int = 0  # completed as expected
    bytes: int = 0
    seconds: float = 0.0  # time spent loading (wrk rounds)
    errors: dict[str, int] = field(default_factory=dict)
    p50_ms: list[float] = field(default_factory=list)  # per wrk round
    p99_ms: float | None = None  # the worst round's
    # Requests that may have started on the server without completing here:
    # wrk's connections at each round's end, listeners whose stream broke.
    cut: int = 0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def fail(self, kind: str, count: int = 1) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + count

    def add_round(self, result: load.Load) -> None:
        self.requests += result.requests
        self.bytes += result.bytes
        self.seconds += result.duration
        self.cut += result.connections
        for kind, count in result.errors.items():
            self.fail(kind, count)
        self.p50_ms.append(result.p50_ms)
        self.p99_ms = max(self.p99_ms or 0.0, result.p99_ms)

    def add_listeners(self, tally: Tally) -> None:
        self.requests += tally.started
        self.bytes += tally.bytes
        self.cut += tally.failed
        for reason, count in tally.reasons.items():
            self.fail(reason, count)
        if tally.stalled:
            self.fail("stalled", tally.stalled)


class CreateFailed(RuntimeError):
    pass


def wav(seconds: int = 16, rate: int = 8000) -> bytes:
    """A real WAV (mono, 16-bit) the app's upload check can read: noise,
    256 KB at the defaults."""
    out = io.BytesIO()
    with wave.open(out, "wb") as audio:
        audio.setnchannels(1)
        audio.setsampwidth(2)
        audio.setframerate(rate)
        audio.writeframes(os.urandom(seconds * rate * 2))
    return out.getvalue()


async def create_remote(rig: Rig, number: int) -> int:
    """A new clip pointing at the origin's 500 KiB file; its id."""
    body = {
        "title": f"Soak clip {number}",
        "genre": GENRE,
        "duration_seconds": 32.0,
        "audio_url": f"{rig.origin.url}/audio/{SMALL[0]}",
    }
    return await _create(rig, {"json": body})


async def create_uploaded(rig: Rig, number: int, audio: bytes) -> int:
    """A new stored clip, uploaded as multipart; its id."""
    form = aiohttp.FormData()  # spent once sent: a new one per request
    form.add_field("title", f"Soak upload {number}")
    form.add_field("genre", GENRE)
    form.add_field("audio", audio, filename="soak.wav", content_type="audio/wav")
    return await _create(rig, {"data": form})


async def _create(rig: Rig, payload: dict) -> int:
    async with rig.session.post(
        f"{rig.app.url}/clips", timeout=REQUEST_TIMEOUT, **payload
    ) as response:
        if response.status != 201:
            raise CreateFailed(f"status {response.status}")
        return (await response.json())["id"]


async def pause(stop: asyncio.Event, seconds: float) -> None:
    """Sleep `seconds`, or less if the soak ends first."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def hammer(
    rig: Rig,
    traffic: Traffic,
    path: str,
    connections: int,
    until: float,
    cpus: frozenset[int] | None,
    body_bytes: int | None = None,
) -> None:
    """wrk on `path` in rounds until the monotonic time `until`."""
    while (left := until - time.monotonic()) >= 1:
        result = await load.run(
            rig.app.url + path,
            connections=connections,
            duration=min(ROUND_SECONDS, left),
            scratch=rig.scratch,
            cpus=cpus,
            body_bytes=body_bytes,
        )
        traffic.add_round(result)


async def come_and_go(
    rig: Rig, traffic: Traffic, path: str, delay: float, stop: asyncio.Event, rng: random.Random
) -> None:
    """A group of slow listeners: arrive, read a few seconds, leave mid-stream, again."""
    await pause(stop, delay)
    while not stop.is_set():
        readers = SlowReaders("127.0.0.1", rig.app.port, path, READERS_PER_GROUP)
        try:
            await readers.open()
            await pause(stop, rng.uniform(*HOLD_SECONDS))
        finally:
            await readers.close()
            traffic.add_listeners(readers.tally)


async def seek(
    rig: Rig, traffic: Traffic, clip_id: int, size: int, stop: asyncio.Event, rng: random.Random
) -> None:
    """Range requests that never start at byte 0: open-ended and bounded,
    each body checked for its exact length. None of them is a play."""
    url = f"{rig.app.url}/clips/{clip_id}/stream"
    while not stop.is_set():
        start = rng.randrange(1, size)
        end = rng.choice((size - 1, min(size - 1, start + rng.randrange(64 * 1024))))
        asked = f"bytes={start}-" if end == size - 1 else f"bytes={start}-{end}"
        try:
            async with rig.session.get(
                url, headers={"Range": asked}, timeout=REQUEST_TIMEOUT
            ) as response:
                body = await response.read()
        except (aiohttp.ClientError, TimeoutError) as error:
            traffic.fail(type(error).__name__)
        else:
            if response.status != 206:
                traffic.fail(f"status {response.status}")
            elif len(body) != end - start + 1:
                traffic.fail("wrong length")
            else:
                traffic.requests += 1
                traffic.bytes += len(body)
        await pause(stop, SEEK_PAUSE)


async def create(rig: Rig, traffic: Traffic, audio: bytes, stop: asyncio.Event) -> None:
    """A new clip every CREATE_EVERY seconds, every UPLOAD_EVERY-th uploaded."""
    number = 0
    while not stop.is_set():
        number += 1
        try:
            if number % UPLOAD_EVERY:
                await create_remote(rig, number)
            else:
                await create_uploaded(rig, number, audio)
        except CreateFailed as failed:
            traffic.fail(str(failed))
        except (aiohttp.ClientError, TimeoutError) as error:
            traffic.fail(type(error).__name__)
        else:
            traffic.requests += 1
        await pause(stop, CREATE_EVERY)
