"""GET/HEAD /clips/{id}/stream against a real origin on loopback, MEDIA_DIR,
and a bucket of the local S3 server (source "bucket": an uploaded clip with
MEDIA_STORE=s3)."""

import asyncio
import contextlib
import socket
from collections import Counter, defaultdict

import aiohttp
import pytest
from aiohttp import web

from db.plays import PLAYS
from tests.scrape import metric, settled
from tests.support import (
    cache_on_and_off,  # noqa: F401 (runs every test cache off and on)
    open_fds,
    read_problem,
    wait_until,
)

KIB = 1024


@pytest.fixture
def media_store(request) -> str:
    """The app keeps uploads in a bucket for source "bucket" (or when a
    test says so), else in MEDIA_DIR."""
    if hasattr(request, "param"):
        return request.param
    callspec = getattr(request.node, "callspec", None)
    return "s3" if callspec is not None and callspec.params.get("source") == "bucket" else "local"


@pytest.fixture
def source_clip(make_clip, origin):
    """make(source, file) -> clip id, for a remote or a stored clip of one
    file (stored in MEDIA_DIR or, for "bucket", in the bucket: both hold
    the same files)."""

    async def make(source: str, name: str, content_type: str = "audio/mpeg") -> int:
        if source == "remote":
            return await make_clip(
                audio_url=str(origin.make_url(f"/audio/{name}")), content_type=content_type
            )
        return await make_clip(media_path=name, content_type=content_type)

    return make


async def plays_of(client, clip_id: int) -> int:
    """The play count a listener sees, once every recorded play is committed."""
    await client.server.app[PLAYS].flush()
    response = await client.get(f"/clips/{clip_id}")
    return (await response.json())["play_count"]


SOURCES = ["remote", "stored", "bucket"]


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("name", ["small.mp3", "big.mp3", "tune.wav"])
async def test_body_is_byte_identical(client, source_clip, audio_dir, source, name):
    clip_id = await source_clip(source, name)
    response = await client.get(f"/clips/{clip_id}/stream")
    body = await response.read()
    assert response.status == 200
    assert body == (audio_dir / name).read_bytes()
    assert response.headers["Content-Length"] == str(len(body))
    assert response.headers["Accept-Ranges"] == "bytes"
    assert "ETag" in response.headers and "Last-Modified" in response.headers


async def test_a_listener_slower_than_the_socket_buffer_gets_every_byte(
    client, source_clip, audio_dir
):
    # A tiny receive window: the server's first sendfile cannot hand over
    # the whole clip, and the rest must follow from where it stopped.
    clip_id = await source_clip("stored", "big.mp3")
    wanted = (audio_dir / "big.mp3").read_bytes()
    loop = asyncio.get_running_loop()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await loop.sock_connect(sock, (client.host, client.port))
        request = f"GET /clips/{clip_id}/stream HTTP/1.1\r\nHost: clips\r\n\r\n"
        await loop.sock_sendall(sock, request.encode())
        received = b""
        while b"\r\n\r\n" not in received or len(received.partition(b"\r\n\r\n")[2]) < len(wanted):
            piece = await loop.sock_recv(sock, 4096)
            assert piece, "the server closed the stream early"
            received += piece
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert body == wanted
    assert await plays_of(client, clip_id) == 1


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize(
    ("range_header", "start", "end"),
    [
        ("bytes=0-", 0, None),
        ("bytes=1000-1999", 1000, 2000),
        ("bytes=-500", -500, None),
        ("bytes=3000000-", 3000000, None),
    ],
)
async def test_range_forms(client, source_clip, audio_dir, source, range_header, start, end):
    data = (audio_dir / "big.mp3").read_bytes()
    clip_id = await source_clip(source, "big.mp3")
    response = await client.get(f"/clips/{clip_id}/stream", headers={"Range": range_header})
    expected = data[start:end]
    assert response.status == 206
    assert await response.read() == expected
    first = start if start >= 0 else len(data) + start
    assert response.headers["Content-Range"] == (
        f"bytes {first}-{first + len(expected) - 1}/{len(data)}"
    )


@pytest.mark.parametrize("source", SOURCES)
async def test_unsatisfiable_range_is_416(client, source_clip, audio_dir, source):
    clip_id = await source_clip(source, "small.mp3")
    response = await client.get(f"/clips/{clip_id}/stream", headers={"Range": "bytes=999999-"})
    await read_problem(response, 416)
    assert response.headers["Content-Range"] == "bytes */10000"


@pytest.mark.parametrize("source", SOURCES)
async def test_head_sends_headers_only_and_does_not_count(client, source_clip, source):
    clip_id = await source_clip(source, "big.mp3")
    response = await client.head(f"/clips/{clip_id}/stream")
    assert response.status == 200
    assert response.headers["Content-Length"] == str(3 * 1024 * 1024 + 17)
    assert await response.read() == b""
    assert await plays_of(client, clip_id) == 0


@pytest.mark.parametrize("source", SOURCES)
async def test_matching_etag_gives_304_and_does_not_count(client, source_clip, source):
    clip_id = await source_clip(source, "small.mp3")
    first = await client.get(f"/clips/{clip_id}/stream")
    await first.read()
    etag = first.headers["ETag"]
    again = await client.get(f"/clips/{clip_id}/stream", headers={"If-None-Match": etag})
    assert again.status == 304
    assert await again.read() == b""
    assert await plays_of(client, clip_id) == 1


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize(
    ("headers", "counts"),
    [
        ({}, True),
        ({"Range": "bytes=0-"}, True),
        ({"Range": "bytes=0-65535"}, True),
        ({"Range": "bytes=0-1"}, False),  # Safari's probe before every real request
        ({"Range": "bytes=0-65534"}, False),
        ({"Range": "bytes=100-"}, False),  # a seek
        ({"Range": "bytes=-100000"}, False),
    ],
)
async def test_counting_rule(client, source_clip, source, headers, counts):
    clip_id = await source_clip(source, "big.mp3")
    response = await client.get(f"/clips/{clip_id}/stream", headers=headers)
    assert response.status in (200, 206)
    await response.read()
    assert await plays_of(client, clip_id) == int(counts)


@pytest.mark.parametrize("source", SOURCES)
async def test_whole_small_file_from_zero_counts(client, source_clip, source):
    """A clip shorter than 64 KiB fetched whole with bytes=0- is a real play."""
    clip_id = await source_clip(source, "small.mp3")
    response = await client.get(f"/clips/{clip_id}/stream", headers={"Range": "bytes=0-"})
    assert response.status == 206
    await response.read()
    assert await plays_of(client, clip_id) == 1


@pytest.mark.parametrize("media_store", ["local", "s3"], indirect=True)
async def test_plays_update_stats_and_metrics(client, source_clip):
    clip_id = await source_clip("stored", "small.mp3")
    for _ in range(3):
        await (await client.get(f"/clips/{clip_id}/stream")).read()
    await (await client.get(f"/clips/{clip_id}/stream", headers={"Range": "bytes=5-"})).read()
    assert await plays_of(client, clip_id) == 3
    stats = await (await client.get(f"/clips/{clip_id}/stats")).json()
    assert stats["plays_by_day"][-1]["plays"] == 3
    assert stats["last_played_at"] is not None
    text = await (await client.get("/metrics")).text()
    assert metric(text, "clips_plays_total") == 3
    assert metric(text, "clips_streams_started_total", clip_id=str(clip_id), source="stored") == 4
    assert metric(text, "clips_stream_bytes_total", source="stored") == 3 * 10_000 + 9_995


@pytest.mark.parametrize("source", SOURCES)
async def test_500_concurrent_streams_count_exactly_500(settings, make_client, source_clip, source):
    # Exactness under load, not origin latency: 500 connections at once
    # overflow the test origin's listen backlog, and a dropped SYN is only
    # retried after 1 s, the suite's connect timeout.
    patient = {
        "upstream_connect_timeout": 10.0,
        "upstream_headers_timeout": 10.0,
        "upstream_read_timeout": 10.0,
    }
    client = await make_client(settings.changed(patient))
    clip_id = await source_clip(source, "small.mp3")
    url = client.make_url(f"/clips/{clip_id}/stream")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def listen() -> int:
            async with session.get(url) as response:
                await response.read()
                return response.status

        statuses = await asyncio.gather(*(listen() for _ in range(500)))
    assert statuses == [200] * 500
    assert await plays_of(client, clip_id) == 500


async def test_unknown_clip_is_404(client):
    await read_problem(await client.get("/clips/999999/stream"), 404)


@pytest.mark.parametrize("media_store", ["local", "s3"], indirect=True)
async def test_missing_stored_file_is_404(client, make_clip):
    clip_id = await make_clip(media_path="gone.mp3")
    body = await read_problem(await client.get(f"/clips/{clip_id}/stream"), 404)
    assert "missing" in body["detail"]


# --- Upstream faults -------------------------------------------------------


class Faults:
    """A misbehaving origin on loopback that records when each request ends."""

    def __init__(self) -> None:
        self.ended: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.app = web.Application()
        self.app.add_routes(
            [
                web.get("/status/{code}", self.status),
                web.get("/hang", self.hang),
                web.get("/cut", self.cut),
                web.get("/stall", self.stall),
                web.get("/endless", self.endless),
                web.get("/redirect", self.redirect),
                web.get("/loop", self.loop),
            ]
        )

    async def status(self, request):
        return web.Response(status=int(request.match_info["code"]), text="nope")

    async def hang(self, request):
        try:
            await asyncio.Event().wait()  # never answers
        finally:
            self.ended["hang"].set()

    async def _partial(self, request, name: str) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "audio/mpeg"})
        response.content_length = 200 * KIB
        await response.prepare(request)
        await response.write(b"x" * 50 * KIB)
        return response

    async def cut(self, request):
        response = await self._partial(request, "cut")
        request.transport.close()  # dies mid-body
        self.ended["cut"].set()
        return response

    async def stall(self, request):
        await self._partial(request, "stall")
        try:
            await asyncio.Event().wait()
        finally:
            self.ended["stall"].set()

    async def endless(self, request):
        response = web.StreamResponse(headers={"Content-Type": "audio/mpeg"})
        await response.prepare(request)
        try:
            while True:
                await response.write(b"y" * 64 * KIB)
        finally:
            self.ended["endless"].set()

    async def redirect(self, request):
        raise web.HTTPFound(request.query["to"])

    async def loop(self, request):
        raise web.HTTPFound("/loop")


@pytest.fixture
async def faults(aiohttp_server):
    faults = Faults()
    faults.server = await aiohttp_server(faults.app)  # cancels handlers on disconnect
    return faults


async def within(event: asyncio.Event, seconds: float = 5.0) -> None:
    async with asyncio.timeout(seconds):
        await event.wait()


async def settled_tasks(client) -> Counter[str]:
    """The running tasks, after a request has opened the client's keep-alive
    connection (whose server task is not a leak)."""
    await (await client.get("/healthz")).read()
    return Counter(repr(task.get_coro()).split(" at ")[0] for task in asyncio.all_tasks())


async def assert_no_task_left(client, before: Counter[str]) -> None:
    """No task more than `before` once the app has finished its own cleanup
    (a pooled connection's release may still be running as a fault ends); a
    leaked task never goes away."""
    extra: Counter[str] = Counter()

    async def none_left() -> bool:
        nonlocal extra
        extra = await settled_tasks(client) - before
        return not extra

    await wait_until(none_left, "no task left behind", seconds=2, details=lambda: str(extra))


@pytest.mark.parametrize("code", [404, 500, 503])
async def test_origin_error_status_is_502(client, make_clip, faults, code):
    clip_id = await make_clip(audio_url=str(faults.server.make_url(f"/status/{code}")))
    body = await read_problem(await client.get(f"/clips/{clip_id}/stream"), 502)
    assert str(code) in body["detail"]
    assert await plays_of(client, clip_id) == 0


async def test_origin_down_is_502(client, make_clip, unused_tcp_port):
    clip_id = await make_clip(audio_url=f"http://127.0.0.1:{unused_tcp_port}/a.mp3")
    await read_problem(await client.get(f"/clips/{clip_id}/stream"), 502)
    assert await plays_of(client, clip_id) == 0


async def test_origin_without_headers_in_time_is_504(client, make_clip, faults):
    clip_id = await make_clip(audio_url=str(faults.server.make_url("/hang")))
    tasks = await settled_tasks(client)
    async with asyncio.timeout(5):  # UPSTREAM_HEADERS_TIMEOUT is 1 s in tests
        await read_problem(await client.get(f"/clips/{clip_id}/stream"), 504)
    await within(faults.ended["hang"])  # the upstream request was abandoned
    assert await plays_of(client, clip_id) == 0
    await assert_no_task_left(client, tasks)


@pytest.mark.parametrize(("path", "reason"), [("/cut", "upstream_error"), ("/stall", "timeout")])
async def test_origin_failing_mid_body_closes_the_stream(client, make_clip, faults, path, reason):
    clip_id = await make_clip(audio_url=str(faults.server.make_url(path)))
    async with asyncio.timeout(5):  # UPSTREAM_READ_TIMEOUT is 1 s in tests
        response = await client.get(f"/clips/{clip_id}/stream")
        assert response.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()  # cut short: fewer bytes than Content-Length
    await within(faults.ended[path.strip("/")])
    text = await (await client.get("/metrics")).text()
    assert metric(text, "clips_streams_ended_total", reason=reason) == 1
    assert metric(text, "clips_streams_in_flight") == 0


async def test_client_going_away_releases_the_upstream_at_once(client, make_clip, faults):
    clip_id = await make_clip(audio_url=str(faults.server.make_url("/endless")))
    tasks = await settled_tasks(client)
    response = await client.get(f"/clips/{clip_id}/stream")
    assert len(await response.content.readexactly(64 * KIB)) == 64 * KIB
    response.close()  # the listener leaves
    await within(faults.ended["endless"], seconds=3)
    text = await settled(client, "clips_streams_in_flight", 0, seconds=3)
    assert metric(text, "clips_streams_ended_total", reason="client_gone") == 1
    await assert_no_task_left(client, tasks)


async def test_redirect_loop_is_502(client, make_clip, faults):
    clip_id = await make_clip(audio_url=str(faults.server.make_url("/loop")))
    body = await read_problem(await client.get(f"/clips/{clip_id}/stream"), 502)
    assert "redirects" in body["detail"]


async def test_redirect_within_allowed_hosts_is_followed(
    client, make_clip, faults, origin, audio_dir
):
    target = origin.make_url("/audio/small.mp3")
    clip_id = await make_clip(audio_url=str(faults.server.make_url(f"/redirect?to={target}")))
    response = await client.get(f"/clips/{clip_id}/stream")
    assert response.status == 200
    assert await response.read() == (audio_dir / "small.mp3").read_bytes()


# --- STREAM_MODE=redirect --------------------------------------------------


@pytest.fixture
async def redirect_client(settings, make_client):
    return await make_client(settings.changed({"stream_mode": "redirect"}))


@pytest.mark.parametrize(
    ("headers", "counts"),
    [
        ({}, True),
        ({"Range": "bytes=0-"}, True),
        ({"Range": "bytes=4096-"}, False),
    ],
)
async def test_redirect_mode_counts_then_sends_the_player_to_the_origin(
    redirect_client, make_clip, origin, audio_dir, headers, counts
):
    url = str(origin.make_url("/audio/big.mp3"))
    clip_id = await make_clip(audio_url=url)
    response = await redirect_client.get(
        f"/clips/{clip_id}/stream", headers=headers, allow_redirects=False
    )
    assert response.status == 302
    assert response.headers["Location"] == url
    assert response.headers["Cache-Control"] == "no-store"
    assert await plays_of(redirect_client, clip_id) == int(counts)
    followed = await redirect_client.get(f"/clips/{clip_id}/stream")
    assert await followed.read() == (audio_dir / "big.mp3").read_bytes()


async def test_redirect_mode_still_serves_stored_clips(redirect_client, make_clip, audio_dir):
    clip_id = await make_clip(media_path="small.mp3")
    response = await redirect_client.get(f"/clips/{clip_id}/stream", allow_redirects=False)
    assert response.status == 200
    assert await response.read() == (audio_dir / "small.mp3").read_bytes()


# --- Hostile origins ---------------------------------------------------------


@pytest.fixture
async def hostile():
    """An origin that answers at the socket level with whatever it is told."""
    replies: dict[str, bytes] = {}
    ended = asyncio.Event()

    async def handle(reader, writer):
        try:
            line = await reader.readline()
            path = line.split()[1].decode()
            while (await reader.readline()) not in (b"\r\n", b""):
                pass
            reply = replies[path]
            writer.write(reply)
            await writer.drain()
            if path == "/endless":
                while True:  # a body that never ends
                    writer.write(b"5\r\nhello\r\n" * 1000)
                    await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            ended.set()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield replies, port, ended
    server.close()
    await server.wait_closed()


@pytest.mark.parametrize(
    ("reply", "status"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Type: audio/mpeg\r\nBroken header line\r\n\r\n", 502),
        (b"NOT HTTP AT ALL\r\n\r\n", 502),
        (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n", 502),
        (b"", 502),  # closes without a word
    ],
)
async def test_garbage_from_the_origin_is_502(client, make_clip, hostile, reply, status):
    replies, port, _ = hostile
    replies["/a.mp3"] = reply
    clip_id = await make_clip(audio_url=f"http://127.0.0.1:{port}/a.mp3")
    async with asyncio.timeout(5):
        await read_problem(await client.get(f"/clips/{clip_id}/stream"), status)


async def test_an_endless_body_is_cut_at_stream_max_seconds(
    settings, make_client, make_clip, hostile
):
    replies, port, ended = hostile
    replies["/endless"] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    client = await make_client(settings.changed({"stream_max_seconds": 1.0}))
    clip_id = await make_clip(audio_url=f"http://127.0.0.1:{port}/endless")
    async with asyncio.timeout(10):
        response = await client.get(f"/clips/{clip_id}/stream")
        assert response.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()  # closed, not completed: the listener sees the cut
        await ended.wait()  # and the origin's connection is gone
    text = await (await client.get("/metrics")).text()
    assert metric(text, "clips_streams_ended_total", reason="timeout") == 1


@pytest.mark.parametrize("source", SOURCES)
async def test_if_modified_since_and_if_range(client, source_clip, audio_dir, source):
    clip_id = await source_clip(source, "big.mp3")
    first = await client.get(f"/clips/{clip_id}/stream", headers={"Range": "bytes=0-9"})
    last_modified = first.headers["Last-Modified"]
    assert first.status == 206
    unchanged = await client.get(
        f"/clips/{clip_id}/stream", headers={"If-Modified-Since": last_modified}
    )
    assert unchanged.status == 304
    # If-Range with the current date resumes the range; with an older date
    # the file changed since, so the whole of it comes back.
    resumed = await client.get(
        f"/clips/{clip_id}/stream", headers={"Range": "bytes=10-19", "If-Range": last_modified}
    )
    assert resumed.status == 206
    assert await resumed.read() == (audio_dir / "big.mp3").read_bytes()[10:20]
    stale = await client.get(
        f"/clips/{clip_id}/stream",
        headers={"Range": "bytes=10-19", "If-Range": "Thu, 01 Jan 2015 00:00:00 GMT"},
    )
    assert stale.status == 200
    assert len(await stale.read()) == (audio_dir / "big.mp3").stat().st_size


@pytest.mark.parametrize(
    ("path", "status"),
    [("/status/500", 502), ("/hang", 504), ("/cut", 200), ("/stall", 200), ("/loop", 502)],
)
async def test_no_fault_leaves_a_socket_or_task_behind(client, make_clip, faults, path, status):
    clip_id = await make_clip(audio_url=str(faults.server.make_url(path)))

    async def fault() -> None:
        response = await client.get(f"/clips/{clip_id}/stream")
        assert response.status == status
        with contextlib.suppress(aiohttp.ClientPayloadError):
            await response.read()

    await fault()  # may leave one healthy keep-alive connection to reuse
    tasks, fds = await settled_tasks(client), open_fds()
    for _ in range(5):
        await fault()
    await assert_no_task_left(client, tasks)  # nothing grows fault by fault
    assert open_fds() <= fds
