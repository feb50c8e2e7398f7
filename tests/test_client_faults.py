"""Listeners who leave, and listeners who never read."""

import asyncio

import aiohttp
import pytest
from aiohttp import web

from tests.scrape import metric, settled
from tests.support import open_fds, wait_until

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
    settings, make_client, make_clip, origin
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
