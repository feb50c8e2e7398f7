"""An origin that fails is named in words, to the listener and in the log:
connection refused, name not found, TLS failure, timed out, an error
status, an invalid redirect, a dropped connection. Real failing origins on
loopback; the problem never carries an address, and the log has one
WARNING per failure naming the clip, the origin's host and the cause."""

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from tests.support import (
    cache_on_and_off,  # noqa: F401 (runs every test cache off and on)
    free_port,
    read_problem,
)


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads the request, never answers (the test's end closes it)."""
    await reader.read()
    writer.close()


async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads the request's head, then closes without a word."""
    await reader.readuntil(b"\r\n\r\n")
    writer.close()


@pytest.fixture
async def raw_origin() -> AsyncIterator:
    """Start a TCP origin on loopback with a connection handler; its port."""
    servers = []

    async def start(handler) -> int:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        servers.append(server)
        return server.sockets[0].getsockname()[1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture
async def redirecting(aiohttp_server):
    """An origin whose /bad redirects to a URL that cannot be followed."""

    async def bad(request: web.Request) -> web.Response:
        # A port past 65535: no URL at all (set raw: aiohttp checks its own).
        return web.Response(status=302, headers={"Location": "http://127.0.0.1:99999/a.mp3"})

    app = web.Application()
    app.router.add_get("/bad", bad)
    return await aiohttp_server(app)


async def stream_failure(client, make_clip, caplog, url: str, status: int) -> tuple[str, str]:
    """Stream a clip of `url`: the problem's detail and the one warning."""
    clip_id = await make_clip(audio_url=url)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        problem = await read_problem(await client.get(f"/clips/{clip_id}/stream"), status)
    text = json.dumps(problem)
    assert "127.0.0.1" not in text and "Connect call" not in text, text
    assert "Error" not in problem["detail"], problem["detail"]  # words, not class names
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"clip {clip_id}: origin "), warnings
    return problem["detail"], warnings[0]


async def test_connection_refused(client, make_clip, caplog):
    port = free_port()
    url = f"http://127.0.0.1:{port}/a.mp3"
    detail, logged = await stream_failure(client, make_clip, caplog, url, 502)
    assert detail == "The clip's audio origin could not be reached: connection refused"
    assert str(port) not in detail
    assert "origin 127.0.0.1 could not be reached: connection refused (502)" in logged


async def test_name_not_found(client, make_clip, caplog):
    url = "http://no-such-origin.invalid/a.mp3"  # RFC 6761: never resolves
    detail, logged = await stream_failure(client, make_clip, caplog, url, 502)
    assert detail.endswith("its host name was not found")
    assert "origin no-such-origin.invalid could not be reached" in logged


async def test_tls_failure(client, make_clip, caplog, origin):
    # https to a plain-HTTP origin: the TLS handshake cannot succeed.
    url = f"https://127.0.0.1:{origin.port}/audio/small.mp3"
    detail, logged = await stream_failure(client, make_clip, caplog, url, 502)
    assert "failed TLS" in detail
    assert "origin 127.0.0.1 failed TLS" in logged


async def test_timed_out(client, make_clip, caplog, raw_origin):
    port = await raw_origin(silent)
    url = f"http://127.0.0.1:{port}/a.mp3"
    detail, logged = await stream_failure(client, make_clip, caplog, url, 504)
    assert detail.endswith("timed out: no answer within UPSTREAM_HEADERS_TIMEOUT")
    assert "origin 127.0.0.1 timed out" in logged and logged.endswith("(504)")


async def test_origin_answered_404(client, make_clip, caplog, origin):
    url = str(origin.make_url("/audio/missing.mp3"))
    detail, logged = await stream_failure(client, make_clip, caplog, url, 502)
    assert detail == "The clip's audio origin answered 404"
    assert "origin 127.0.0.1 answered 404 (502)" in logged


async def test_invalid_redirect(client, make_clip, caplog, redirecting):
    url = str(redirecting.make_url("/bad"))
    detail, logged = await stream_failure(client, make_clip, caplog, url, 502)
    assert detail.endswith("is refused: the origin sent an invalid redirect")
    assert "invalid redirect" in logged


async def test_origin_hangs_up(client, make_clip, caplog, raw_origin):
    port = await raw_origin(hang_up)
    url = f"http://127.0.0.1:{port}/a.mp3"
    detail, logged = await stream_failure(client, make_clip, caplog, url, 502)
    assert detail.endswith("closed the connection without answering")
    assert "closed the connection without answering" in logged


async def test_a_refused_internal_origin_says_so_without_its_address(
    settings, make_client, make_clip, caplog
):
    client = await make_client(settings.changed({"upstream_allow": ()}))
    url = "http://127.0.0.1:9/a.mp3"
    detail, logged = await stream_failure(client, make_clip, caplog, url, 502)
    assert detail.endswith("is refused: the URL's host is not a public address")
    assert "is refused: the URL's host is not a public address (502)" in logged
