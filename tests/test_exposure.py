"""What an exposed deployment cannot be tricked into: starting open, building
URLs from a forged Host, or counting a script's hang-ups as plays.
"""

import asyncio
import logging
import os
import sys
from pathlib import Path

import pytest

from db import POOL
from db.clips import get_clip
from db.plays import PLAYS
from server import create_app
from streaming.dedup import PLAY_DEDUP
from tests.scrape import metric, scrape
from tests.support import error_fields, free_port, read_problem, wait_until

ROOT = Path(__file__).resolve().parent.parent


async def run_server(env: dict[str, str]) -> tuple[int, str]:
    """`python server.py` with `env`: its exit code and output, once it exits."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        ROOT / "server.py",
        env={**os.environ, "PYTHON_DOTENV_DISABLED": "1", **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 30)
    return process.returncode, output.decode()


# --- Open by default -----------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "clips.internal"])
async def test_a_public_listener_without_keys_refuses_to_start(host, database_url):
    code, output = await run_server({"HOST": host, "DATABASE_URL": database_url})
    assert code != 0
    (line,) = output.strip().splitlines()
    assert "API_KEYS" in line and "ALLOW_OPEN_API" in line and f"HOST={host}" in line
    assert "Traceback" not in output


def test_loopback_keys_or_an_explicit_opt_in_may_start(settings):
    for changes in (
        {"host": "127.0.0.1"},
        {"host": "::1"},
        {"host": "localhost"},
        {"host": "0.0.0.0", "allow_open_api": True},
        {
            "host": "0.0.0.0",
            "api_keys": "read:reader-key-0123456789",
            "stream_url_secret": ("s" * 32,),
        },
    ):
        assert settings.changed(changes).host == changes["host"]


def test_a_public_listener_without_public_url_is_warned_about(settings, caplog):
    with caplog.at_level(logging.WARNING):
        create_app(settings.changed({"host": "0.0.0.0", "allow_open_api": True}))
    assert any("PUBLIC_URL is not set" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        create_app(
            settings.changed(
                {"host": "0.0.0.0", "allow_open_api": True, "public_url": "https://c.example"}
            )
        )
    assert not any("PUBLIC_URL" in r.getMessage() for r in caplog.records)


# --- Host ------------------------------------------------------------------------


BAD_HOSTS = [
    'a.example>; rel="preload',
    "a.example/evil",
    "a example",
    "user@a.example",
    "a.example:80:80",
    "a.example:99999",
    "[zz",
    "[1:2:3]",
    "[::1",
    "-a.example",
    "",
]


async def test_a_malformed_host_is_400_and_builds_no_url(client, make_clip, subtests):
    clip_id = await make_clip(audio_url="https://cdn.example.invalid/a.mp3")
    for host in BAD_HOSTS:
        with subtests.test(host=host):
            response = await client.get(f"/clips/{clip_id}", headers={"Host": host})
            body = await read_problem(response, 400)
            assert error_fields(body) == ["Host"]
            assert "preload" not in response.headers.get("Link", "")


async def test_a_valid_host_builds_the_urls(client, make_clip, subtests):
    clip_id = await make_clip(audio_url="https://cdn.example.invalid/a.mp3")
    for host in ("clips.example.com", "clips.example.com:8443", "127.0.0.1:8000", "[::1]:8000"):
        with subtests.test(host=host):
            response = await client.get(f"/clips/{clip_id}", headers={"Host": host})
            assert response.status == 200
            stream_url = (await response.json())["stream_url"]
            assert stream_url == f"http://{host}/clips/{clip_id}/stream"


async def test_public_url_wins_over_any_host(settings, make_client, make_clip):
    client = await make_client(settings.changed({"public_url": "https://clips.example.com"}))
    clip_id = await make_clip(audio_url="https://cdn.example.invalid/a.mp3")
    body = await (await client.get(f"/clips/{clip_id}", headers={"Host": "evil.example"})).json()
    assert body["stream_url"] == f"https://clips.example.com/clips/{clip_id}/stream"


# --- Plays inflated by a loop ---------------------------------------------------


async def hang_up(client, clip_id: int, times: int, **headers: str) -> None:
    """Open the stream, read the headers, hang up: `times` times."""
    for _ in range(times):
        async with client.get(f"/clips/{clip_id}/stream", headers=headers) as response:
            assert response.status == 200


async def plays(app, clip_id: int) -> int:
    await app[PLAYS].flush()
    return (await get_clip(app[POOL], clip_id))["play_count"]


async def test_every_listen_counts_by_default(client, make_clip, app):
    clip_id = await make_clip(media_path="big.mp3")
    await hang_up(client, clip_id, 20)
    assert await plays(app, clip_id) == 20


async def test_with_dedup_a_loop_counts_once_per_listener(settings, make_client, make_clip):
    client = await make_client(settings.changed({"play_dedup_seconds": 3600}))
    app = client.server.app
    clip_id = await make_clip(media_path="big.mp3")
    other = await make_clip(media_path="small.mp3")

    await hang_up(client, clip_id, 20, **{"User-Agent": "loop/1.0"})
    assert await plays(app, clip_id) == 1
    await hang_up(client, clip_id, 3, **{"User-Agent": "another browser"})
    assert await plays(app, clip_id) == 2  # another listener on the same address
    await hang_up(client, other, 2, **{"User-Agent": "loop/1.0"})
    assert await plays(app, other) == 1  # another clip
    text = await scrape(client)
    assert metric(text, "clips_plays_repeated_total") == 19 + 2 + 1


async def test_x_forwarded_for_names_the_listener_only_from_a_trusted_proxy(
    settings, make_client, make_clip
):
    # The test client connects from 127.0.0.1: trusted here, like a proxy.
    client = await make_client(
        settings.changed({"play_dedup_seconds": 3600, "trusted_proxies": ("127.0.0.0/8",)})
    )
    app = client.server.app
    clip_id = await make_clip(media_path="big.mp3")
    for address in ("203.0.113.1", "203.0.113.2", "203.0.113.1"):
        await hang_up(client, clip_id, 1, **{"X-Forwarded-For": address})
    assert await plays(app, clip_id) == 2
    # A chain: the rightmost address that is not a trusted proxy is the listener.
    await hang_up(client, clip_id, 1, **{"X-Forwarded-For": "198.51.100.7, 127.0.0.5"})
    await hang_up(client, clip_id, 1, **{"X-Forwarded-For": "203.0.113.9, 198.51.100.7"})
    assert await plays(app, clip_id) == 3


async def test_x_forwarded_for_from_anyone_else_is_ignored(settings, make_client, make_clip):
    client = await make_client(
        settings.changed({"play_dedup_seconds": 3600, "trusted_proxies": ("10.0.0.0/8",)})
    )
    app = client.server.app
    clip_id = await make_clip(media_path="big.mp3")
    for address in ("203.0.113.1", "203.0.113.2", "203.0.113.3"):
        await hang_up(client, clip_id, 1, **{"X-Forwarded-For": address})
    assert await plays(app, clip_id) == 1  # one peer, whatever it claims


async def test_dedup_holds_in_redirect_mode(settings, make_client, make_clip, origin):
    client = await make_client(
        settings.changed({"play_dedup_seconds": 3600, "stream_mode": "redirect"})
    )
    clip_id = await make_clip(audio_url=str(origin.make_url("/audio/big.mp3")))
    for _ in range(5):
        response = await client.get(f"/clips/{clip_id}/stream", allow_redirects=False)
        assert response.status == 302
    assert await plays(client.server.app, clip_id) == 1


def test_trusted_proxies_must_be_addresses_or_networks(settings):
    with pytest.raises(ValueError, match="not an address or network"):
        settings.changed({"trusted_proxies": ("proxy.internal",)})


# --- Logs an anonymous client can write ----------------------------------------


async def test_a_malformed_request_is_one_info_line_not_an_error(database_url, tmp_path):
    """aiohttp's parser refuses it (plain 400) and would log an ERROR with a
    traceback: garbage from anyone must not flood the error log."""
    port = free_port()
    log = tmp_path / "server.log"
    env = {
        **os.environ,
        "PYTHON_DOTENV_DISABLED": "1",
        "DATABASE_URL": database_url,
        "MIGRATE_ON_START": "false",
        "PORT": str(port),
        "MEDIA_DIR": str(tmp_path),
        "CACHE_DIR": str(tmp_path / "cache"),
    }
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, ROOT / "server.py", env=env, stdout=out, stderr=out
        )
    try:

        async def answered() -> bytes | None:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                return None
            writer.write(b"GET /\xff HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = await reader.read()
            writer.close()
            return answer

        answer = await wait_until(answered, "the server answers", seconds=30)
        assert answer.startswith(b"HTTP/1.0 400") or answer.startswith(b"HTTP/1.1 400")
        await wait_until(lambda: "clips.access" in log.read_text(), "the access line", seconds=5)
    finally:
        process.terminate()
        await process.wait()
    text = log.read_text()
    assert "ERROR" not in text and "Traceback" not in text, text
    assert "INFO aiohttp.server: refused a malformed request: Invalid char in url path" in text


async def test_a_listener_is_kept_as_a_fixed_size_entry_and_forgotten_after_the_window(
    settings, make_client, make_clip
):
    """A User-Agent of any length costs a 16-byte digest; once the window
    has passed, the same listener counts again."""
    client = await make_client(settings.changed({"play_dedup_seconds": 0.5}))
    app = client.server.app
    clip_id = await make_clip(media_path="big.mp3")
    agent = {"User-Agent": "x" * 8000}
    await hang_up(client, clip_id, 3, **agent)
    assert await plays(app, clip_id) == 1
    ((_, address, digest),) = app[PLAY_DEDUP]._until
    assert address == "127.0.0.1" and len(digest) == 16
    await asyncio.sleep(0.6)  # the window itself is what is tested
    await hang_up(client, clip_id, 1, **agent)
    assert await plays(app, clip_id) == 2
    assert len(app[PLAY_DEDUP]._until) == 1  # the expired entry is gone
