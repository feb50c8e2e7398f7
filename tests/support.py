"""What several test modules need, written once: reading a problem body,
waiting (bounded) for something to happen, the MP3 uploads send, and
counting what the server holds (clips, stored files, open descriptors).

Reading /metrics is tests/scrape.py's; driving Chromium, tests/browser.py's.
"""

import asyncio
import inspect
import io
import os
import socket
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

PROBLEM = "application/problem+json"
FIXTURES = Path(__file__).parent / "fixtures"

# A real MP3, committed so no encoder is needed at test time: 3 s of the
# test tune (db.seed.synthesise(220.0, [0, 4, 7, 12], 120, seconds=3), mono
# 22.05 kHz), encoded once by Debian's lame 3.100: `lame --quiet -b 96`.
MP3 = (FIXTURES / "tune.mp3").read_bytes()
MP3_SECONDS = 3.0
MP3_BITRATE = 96_000


# What a module runs its stream tests with: the read-through cache of remote
# clips off (the pipe) and on (streaming/cache.py), room for every fixture.
CACHE_MODES = {"cache-off": 0, "cache-on": 64 * 1024 * 1024}


@pytest.fixture(name="cache_max_bytes", params=CACHE_MODES.values(), ids=CACHE_MODES.keys())
def cache_on_and_off(request) -> int:
    """Overrides conftest's cache_max_bytes where a module imports it: every
    test of that module runs with the cache off and on. Where an answer
    legitimately differs with the cache on, the test says so."""
    return request.param


async def read_problem(response: aiohttp.ClientResponse, status: int) -> dict:
    """The RFC 9457 body of an error answer, checked as a client reads it."""
    assert response.status == status, await response.text()
    assert response.content_type == PROBLEM
    body = await response.json()
    assert body["type"] == "about:blank"
    assert body["title"] == HTTPStatus(status).phrase
    assert body["status"] == status
    assert body["detail"], body
    return body


def error_fields(problem: dict) -> list[str]:
    """The fields a 400 problem names as wrong, in its order."""
    return [error["field"] for error in problem.get("errors", [])]


async def wait_until(
    condition: Callable[[], Any | Awaitable[Any]],
    what: str,
    *,
    seconds: float = 5.0,
    interval: float = 0.02,
    details: Callable[[], str] | None = None,
) -> Any:
    """Call `condition` (plain or async) until it returns something truthy,
    and return that; fail naming `what` (and `details()`, e.g. a server's
    log) when `seconds` pass first. It returns as soon as the condition
    holds: the interval paces the polling, it does not stand in for an
    event."""
    deadline = time.monotonic() + seconds
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() >= deadline:
            extra = f":\n{details()}" if details else ""
            pytest.fail(f"{what}: not within {seconds} s{extra}")
        await asyncio.sleep(interval)


def upload_form(
    audio: bytes | io.BytesIO | None, filename: str = "song.mp3", **fields: str
) -> aiohttp.FormData:
    """A multipart upload as a browser form sends it: title, genre, the file
    (large files as io.BytesIO: aiohttp warns about big raw bytes)."""
    data = aiohttp.FormData(default_to_multipart=True)
    for name, value in {"title": "Uploaded", "genre": "rock", **fields}.items():
        data.add_field(name, value)
    if audio is not None:
        data.add_field("audio", audio, filename=filename, content_type="audio/mpeg")
    return data


async def clip_count(pool: asyncpg.Pool) -> int:
    """How many clips the database holds, whatever the API would list."""
    return await pool.fetchval("SELECT count(*) FROM clips")


def media_files(media_dir: Path) -> set[str]:
    return {path.name for path in media_dir.iterdir()}


def open_fds() -> int:
    """File descriptors this process holds: sockets included."""
    return len(os.listdir("/proc/self/fd"))


def free_port() -> int:
    """A loopback port nothing listens on, for a process started by a test."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def raw_form(boundary: str = "rawupload") -> tuple[bytes, bytes]:
    """An upload form's bytes before its file (title, genre, the file part's
    headers) and after it (the closing boundary)."""
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="title"\r\n\r\nRaw\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="genre"\r\n\r\nrock\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="audio"; filename="a.mp3"\r\n'
        "Content-Type: audio/mpeg\r\n\r\n"
    ).encode()
    return head, f"\r\n--{boundary}--\r\n".encode()


def raw_upload_head(audio_bytes: int, boundary: str = "rawupload") -> bytes:
    """An upload's request head and form up to the file's first byte, as a
    client writes them on a socket; the file is `audio_bytes` long (the
    Content-Length counts them and the closing boundary)."""
    form, tail = raw_form(boundary)
    return (
        b"POST /clips HTTP/1.1\r\nHost: x\r\n"
        + f"Content-Type: multipart/form-data; boundary={boundary}\r\n".encode()
        + f"Content-Length: {len(form) + audio_bytes + len(tail)}\r\n\r\n".encode()
        + form
    )


async def read_status(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The status and the rest of a response read off a raw socket."""
    status_line = await reader.readline()
    rest = await reader.readuntil(b"\r\n\r\n")
    return int(status_line.split()[1]), rest


async def send_slowly(
    client, head: bytes, body: bytes, *, first: int, trickle: float | None
) -> tuple[int, bytes]:
    """Send `head` and the body's first `first` bytes on a raw socket, then
    nothing more (`trickle` None: a stalled body) or one byte every
    `trickle` seconds; the status and what follows it (headers, then up to
    2,000 body bytes), once the server answers, within 10 s."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(head + body[:first])

    async def drip() -> None:
        for byte in body[first:]:
            await asyncio.sleep(trickle)  # the client's pace, not a wait for the server
            writer.write(bytes([byte]))

    dripping = asyncio.create_task(drip()) if trickle else None
    try:
        async with asyncio.timeout(10):
            status, rest = await read_status(reader)
            return status, rest + await reader.read(2000)
    finally:
        if dripping:
            dripping.cancel()
        writer.close()
