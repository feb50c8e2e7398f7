"""Listeners who leave, and listeners who never read."""

import asyncio
import socket
import time

import aiohttp
import pytest
from aiohttp import web

from settings import SETTINGS
from tests.scrape import metric, scrape, settled
from tests.support import (
    cache_on_and_off,  # noqa: F401 (runs every test cache off and on)
    open_fds,
    read_problem,
    wait_until,
)

MIB = 1024 * 1024


class Endless:
    """An origin whose body never ends; it counts what it managed to send."""

    def __init__(self) -> None:
        self.sent = 0
        self.open = 0
        self.app = web.Application()
        self.app.router.add_get("/endless.mp3", self.serve)

    async def serve(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "audio/mpeg"})
        await response.prepare(request)
        self.open += 1
        chunk = b"z" * 64 * 1024
        try:
            while True:
                await response.write(chunk)
                self.sent += len(chunk)
        finally:
            self.open -= 1


@pytest.fixture
async def endless(aiohttp_server):
    origin = Endless()
    origin.server = await aiohttp_server(origin.app)
    return origin


async def test_1000_listeners_leaving_mid_stream_leave_nothing_behind(
    settings, make_client, make_clip, origin, cache_max_bytes
):
    # App, origin and the 1,000 listeners share this one event loop (and the
    # origin's accept backlog): give the origin time to answer them all.
    patient = {f"upstream_{t}_timeout": 30.0 for t in ("connect", "headers", "read")}
    client = await make_client(settings.changed(patient))
    clip_id = await make_clip(audio_url=str(origin.make_url("/audio/big.mp3")))
    url = client.make_url(f"/clips/{clip_id}/stream")
    await (await client.get("/healthz")).read()
    fds, tasks = open_fds(), len(asyncio.all_tasks())

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def leave_early() -> int | str:
            response = await session.get(url)
            if response.status != 200:
                return f"{response.status} {await response.text()}"
            await response.content.readexactly(64 * 1024)
            response.close()  # gone, mid-file
            return response.status

        statuses = await asyncio.gather(*(leave_early() for _ in range(1000)))
    assert [s for s in statuses if s != 200] == []

    text = await settled(client, "clips_streams_in_flight", 0)
    ended = {
        r: metric(text, "clips_streams_ended_total", reason=r)
        for r in ("complete", "client_gone", "upstream_error", "timeout")
    }
    assert sum(ended.values()) == 1000, ended
    assert ended["upstream_error"] == ended["timeout"] == 0, ended  # leaving is not a fault
    if cache_max_bytes:
        # The clip is hot after the first fill: its 3 MiB go out by one
        # sendfile as fast as the kernel takes them, so a listener may have
        # had all of it before it closed. Every stream still ends.
        assert ended["client_gone"] > 0, ended
    else:
        assert ended["client_gone"] > 900, ended
    assert len(asyncio.all_tasks()) <= tasks + 2  # the scrape's own connection
    assert open_fds() <= fds + 5  # no upstream or client socket left open


async def test_a_listener_who_never_reads_holds_the_origin_back(client, make_clip, endless):
    """Back-pressure: the proxy reads from the origin only as fast as the
    listener drains, so memory stays bounded by socket buffers."""
    clip_id = await make_clip(audio_url=str(endless.server.make_url("/endless.mp3")))
    response = await client.get(f"/clips/{clip_id}/stream")
    assert response.status == 200
    # Never read. What the origin could send stops growing once the buffers
    # between it and the listener are full.
    readings = []

    def stopped_growing() -> bool:
        readings.append(endless.sent)
        return len(readings) > 10 and readings[-1] == readings[-10]

    await wait_until(
        stopped_growing,
        "the origin stopping",
        seconds=5,
        interval=0.05,
        details=lambda: f"it kept sending: {readings[-1] / MIB:.1f} MiB",
    )
    assert endless.sent < 64 * MIB
    response.close()
    # The upstream request is released.
    await wait_until(lambda: endless.open == 0, "the origin's request ending", seconds=2)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /clips?" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",  # URL over 8 KiB
        b"GET /clips HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
        b"GET /clips HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-H%d: v\r\n" % i for i in range(200))
        + b"\r\n",  # too many headers
    ],
)
async def test_oversized_requests_are_refused_and_the_server_carries_on(client, request_bytes):
    """aiohttp's parser refuses these before any handler runs: a plain 400
    (the one answer not in problem+json) and a closed connection, at once."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(request_bytes)
    await writer.drain()
    async with asyncio.timeout(5):
        answer = await reader.read()  # until the server closes the connection
    writer.close()
    assert answer.startswith(b"HTTP/1.0 400") or answer.startswith(b"HTTP/1.1 400")
    assert b"Traceback" not in answer
    assert (await client.get("/healthz")).status == 200


# --- Listeners who never read (issue 14, finding 2) -------------------------


@pytest.fixture
async def stalled():
    """open(client, path): a listener who asks for a stream and never reads
    a byte (a raw socket with a tiny receive buffer); closed at the end."""
    sockets: list[socket.socket] = []

    async def open_listener(client, path: str) -> socket.socket:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        sock.setblocking(False)
        sockets.append(sock)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, (client.host, client.port))
        await loop.sock_sendall(sock, f"GET {path} HTTP/1.1\r\nHost: clips\r\n\r\n".encode())
        return sock

    yield open_listener
    for sock in sockets:
        sock.close()


async def dropped(sock: socket.socket) -> bool:
    """Whether the server has dropped this listener: reading what it holds
    ends in a reset or end of stream."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(5):
            while await loop.sock_recv(sock, 1 << 20):
                pass
    except ConnectionResetError:
        pass
    return True


def never_reading(settings, **changes):
    """Two origin connections, a short send deadline, a patient header
    timeout (so that a 503 cannot be a 504 in disguise)."""
    return settings.changed(
        {
            "upstream_max_connections": 2,
            "stream_send_timeout": 0.5,
            "upstream_headers_timeout": 5.0,
            **changes,
        }
    )


async def test_listeners_who_never_read_are_dropped_and_free_their_origin_connections(
    settings, make_client, make_clip, origin, audio_dir, stalled
):
    client = await make_client(never_reading(settings))
    clip_id = await make_clip(audio_url=str(origin.make_url("/audio/big.mp3")))
    path = f"/clips/{clip_id}/stream"
    listeners = [await stalled(client, path) for _ in range(2)]
    text = await settled(client, "clips_streams_ended_total", 2, reason="send_timeout")
    assert metric(text, "clips_streams_ended_total", reason="timeout") == 0
    await settled(client, "clips_streams_in_flight", 0)
    for sock in listeners:
        assert await dropped(sock)
    # Both origin connections are free again: a third listener plays.
    response = await client.get(path)
    assert response.status == 200
    assert await response.read() == (audio_dir / "big.mp3").read_bytes()


async def test_with_every_origin_connection_taken_a_stream_is_503_at_once(
    settings, make_client, make_clip, origin, audio_dir, stalled, cache_max_bytes
):
    client = await make_client(never_reading(settings, stream_send_timeout=30.0))
    clip_id = await make_clip(audio_url=str(origin.make_url("/audio/big.mp3")))
    path = f"/clips/{clip_id}/stream"
    listeners = [await stalled(client, path) for _ in range(2)]
    await settled(client, "clips_streams_in_flight", 2)
    if cache_max_bytes:
        # Legitimately different: the stalled listeners read the cache's
        # file, and its one fill gave its origin connection back when the
        # clip was whole. A third listener plays from the cache.
        response = await client.get(path)
        assert response.status == 200
        assert await response.read() == (audio_dir / "big.mp3").read_bytes()
        text = await scrape(client)
        assert metric(text, "clips_upstream_requests_total", outcome="busy") == 0
        assert metric(text, "clips_upstream_requests_total", outcome="ok") == 1
        return

    started = time.monotonic()
    response = await client.get(path)
    waited = time.monotonic() - started
    problem = await read_problem(response, 503)
    assert "origin connections" in problem["detail"]
    assert int(response.headers["Retry-After"]) > 0
    # Not queued behind the connector until UPSTREAM_HEADERS_TIMEOUT (5 s).
    assert waited < 2.5, waited
    text = await scrape(client)
    assert metric(text, "clips_upstream_requests_total", outcome="busy") == 1
    assert metric(text, "clips_streams_started_total", clip_id=str(clip_id), source="remote") == 2

    for sock in listeners:  # they leave: their connections come back
        sock.close()
    await settled(client, "clips_streams_in_flight", 0)
    response = await client.get(path)
    assert response.status == 200
    assert await response.read() == (audio_dir / "big.mp3").read_bytes()


async def test_a_stored_stream_drops_a_listener_who_never_reads(
    settings, make_client, make_clip, stalled
):
    client = await make_client(never_reading(settings))
    clip_id = await make_clip(media_path="big.mp3")
    sock = await stalled(client, f"/clips/{clip_id}/stream")
    # 3 MiB at 256 KiB per 0.5 s: the whole body's deadline is 6 s.
    text = await settled(client, "clips_streams_ended_total", 1, seconds=15, reason="send_timeout")
    assert metric(text, "clips_streams_in_flight") == 0
    assert metric(text, "clips_stream_bytes_total", source="stored") < 3 * MIB
    assert await dropped(sock)


@pytest.mark.parametrize("source", ["remote", "stored"])
async def test_a_stream_lasts_no_longer_than_its_clip_allows(
    settings, make_client, make_clip, endless, stalled, source
):
    """A 0.5 s clip, factor 1, slack 0.5 s: one second, though
    STREAM_MAX_SECONDS is half an hour and the send deadline a minute."""
    life = {"stream_duration_factor": 1.0, "stream_duration_slack": 0.5}
    client = await make_client(settings.changed({**life, "stream_send_timeout": 60.0}))
    assert client.server.app[SETTINGS].stream_max_seconds == 1800
    if source == "remote":
        # An origin that never ends, a listener reading all it gets.
        clip_id = await make_clip(
            audio_url=str(endless.server.make_url("/endless.mp3")), duration_seconds=0.5
        )
        async with asyncio.timeout(10):
            response = await client.get(f"/clips/{clip_id}/stream")
            with pytest.raises(aiohttp.ClientPayloadError):
                await response.read()
        await wait_until(lambda: endless.open == 0, "the origin's request ending", seconds=2)
    else:
        # A stored clip far longer than it claims, a listener never reading.
        clip_id = await make_clip(media_path="big.mp3", duration_seconds=0.5)
        await stalled(client, f"/clips/{clip_id}/stream")
    text = await settled(client, "clips_streams_ended_total", 1, reason="timeout")
    assert metric(text, "clips_streams_ended_total", reason="send_timeout") == 0
