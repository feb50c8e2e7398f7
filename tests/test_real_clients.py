"""Counts and bytes that real browsers and real origins cannot fool.

The matrix: origins as they exist in the field (honouring Range, ignoring
it, ignoring it while advertising `Accept-Ranges: bytes`, a wrong or
missing type, a gzipped body, an empty body, a chunked body of unknown
length), times listeners (Chromium's request sequence, Safari's, a replay
from the same browser, curl), times modes (proxy, redirect), plus stored
clips. Each cell states the statuses, and the play delta; every response of
the app is checked for its bytes (the slice its Content-Range names) and
for the headers every stream carries. The play rule itself is the README's
table ("When a play counts"), read from the README and run against every
source and mode. The sequences that a real Chromium produces are also run
in one (the end of this file).
"""

import asyncio
import gzip
import io
import re
import wave
from pathlib import Path

import pytest
from aiohttp import web
from multidict import CIMultiDict

from db import POOL
from db.clips import get_clip
from db.plays import PLAYS
from tests.browser import AUDIO_STATE
from tests.support import (
    cache_on_and_off,  # noqa: F401 (runs every test cache off and on)
    read_problem,
)

ROOT = Path(__file__).resolve().parent.parent
SEEK = 1024 * 1024  # Chromium aligns a far seek to 32 KiB: `bytes=1048576-`
SIZE = 3 * 1024 * 1024 + 17  # big.mp3

# --- Origins as they exist -------------------------------------------------


def origins_app(audio_dir: Path) -> web.Application:
    """Every kind of origin at its own path; `{name}` is a file of audio_dir."""

    def data(request: web.Request) -> bytes:
        return (audio_dir / request.match_info["name"]).read_bytes()

    async def ranged(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(audio_dir / request.match_info["name"])

    def typed(content_type: str):
        async def handler(request: web.Request) -> web.StreamResponse:
            path = audio_dir / request.match_info["name"]
            return web.FileResponse(path, headers={"Content-Type": content_type})

        return handler

    async def ignoring(request: web.Request) -> web.Response:
        """Range and conditional headers ignored; validators sent."""
        response = web.Response(body=data(request), content_type="audio/mpeg")
        response.etag = "v1"
        response.last_modified = 1_700_000_000
        return response

    async def advertising(request: web.Request) -> web.Response:
        response = await ignoring(request)
        response.headers["Accept-Ranges"] = "bytes"
        return response

    async def gzipped(request: web.Request) -> web.Response:
        return web.Response(
            body=gzip.compress(data(request)),
            headers={"Content-Encoding": "gzip", "Content-Type": "audio/mpeg"},
        )

    async def empty(request: web.Request) -> web.Response:
        return web.Response(body=b"", content_type="audio/mpeg")

    async def chunked(request: web.Request) -> web.StreamResponse:
        """No length, no ranges: the whole body in chunks, whatever was asked."""
        body = b"" if request.match_info["name"] == "nothing" else data(request)
        response = web.StreamResponse(headers={"Content-Type": "audio/mpeg"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(body), 256 * 1024):
            await response.write(body[start : start + 256 * 1024])
        await response.write_eof()
        return response

    async def trickle(request: web.Request) -> web.StreamResponse:
        """No length, then one byte a second: forever, for a listener."""
        response = web.StreamResponse(headers={"Content-Type": "audio/mpeg"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for byte in data(request):
            await response.write(bytes([byte]))
            await asyncio.sleep(1)
        return response

    async def silent(request: web.Request) -> web.StreamResponse:
        """Headers with a length, then not a byte."""
        response = web.StreamResponse(headers={"Content-Type": "audio/mpeg"})
        response.content_length = 1000
        await response.prepare(request)
        await asyncio.Event().wait()
        return response

    async def part(request: web.Request) -> web.Response:
        """206 with `Content-Range: bytes {first}-{last}/{size}` whatever was
        asked, and the bytes it names, or only `length` of them."""
        body = data(request)
        first, last = int(request.query["first"]), int(request.query["last"])
        sent = body[first : last + 1][: int(request.query.get("length", len(body)))]
        return web.Response(
            status=206,
            body=sent,
            content_type="audio/mpeg",
            headers={"Content-Range": f"bytes {first}-{last}/{len(body)}"},
        )

    app = web.Application()
    for kind, handler in {
        "ranged": ranged,
        "ignoring": ignoring,
        "advertising": advertising,
        "html": typed("text/html; charset=utf-8"),
        "octet": typed("application/octet-stream"),
        "gzip": gzipped,
        "empty": empty,
        "chunked": chunked,
        "trickle": trickle,
        "silent": silent,
        "part": part,
    }.items():
        app.router.add_get(f"/{kind}/{{name}}", handler)
    return app


@pytest.fixture
async def origins(aiohttp_server, audio_dir):
    return await aiohttp_server(origins_app(audio_dir))


# --- Listeners, as they request ---------------------------------------------

# A listener is visits; a visit is requests (Range or None). Within a visit,
# a request after a redirect goes to the redirect's target: Safari and iOS
# do so (whatwg/fetch#145), and so does Chromium's media loader, which keeps
# the URL it was redirected to for later ranges.
LISTENERS = {
    # Chromium 156 (measured, tests/test_browser.py): `bytes=0-`, then a far
    # seek as `bytes=N-` with N aligned to 32 KiB.
    "chromium": [["bytes=0-", f"bytes={SEEK}-"]],
    # Safari/iOS as documented by Apple ("Configuring your server", HTTP Live
    # Streaming and byte-range requests): a `bytes=0-1` probe, then the whole
    # file as a range, then seeks.
    "safari": [["bytes=0-1", "bytes=0-{last}", f"bytes={SEEK}-"]],
    # The same browser playing the clip again: no-store makes it ask again.
    "replay": [[None], [None]],
    "curl": [[None]],
}

OK = {
    "chromium": [[206, 206]],
    "safari": [[206, 206, 206]],
    "replay": [[200], [200]],
    "curl": [[200]],
}
PLAYS_OK = {"chromium": 1, "safari": 1, "replay": 2, "curl": 1}
BROKEN = {k: [[502] * len(v) for v in visits] for k, visits in LISTENERS.items()}
UNKNOWN_LENGTH = {
    "chromium": [[200, 200]],  # no length: a seek gets the whole body, not a play
    "safari": [[206, 200, 200]],  # the probe is still cut here
    "replay": [[200], [200]],
    "curl": [[200]],
}


def redirected(origin_seek: int, probe: int) -> dict:
    """Statuses in redirect mode: the probe answered here (`probe`), plays
    and seeks redirected, later ranges answered by the origin itself."""
    return {
        "chromium": [[302, origin_seek]],
        "safari": [[probe, 302, origin_seek]],
        "replay": [[302], [302]],
        "curl": [[302]],
    }


# (source, mode) -> (statuses per listener, plays per listener). Stored clips
# are the same in both modes: redirect applies to remote audio only.
MATRIX = {
    ("stored", "proxy"): (OK, PLAYS_OK),
    ("stored", "redirect"): (OK, PLAYS_OK),
    **{(kind, "proxy"): (OK, PLAYS_OK) for kind in ("ranged", "ignoring", "advertising")},
    **{(kind, "proxy"): (OK, PLAYS_OK) for kind in ("html", "octet")},
    ("chunked", "proxy"): (UNKNOWN_LENGTH, PLAYS_OK),
    **{(kind, "proxy"): (BROKEN, dict.fromkeys(LISTENERS, 0)) for kind in ("gzip", "empty")},
    ("nothing", "proxy"): (BROKEN, dict.fromkeys(LISTENERS, 0)),
    ("ranged", "redirect"): (redirected(206, 206), PLAYS_OK),
    ("html", "redirect"): (redirected(206, 206), PLAYS_OK),
    ("octet", "redirect"): (redirected(206, 206), PLAYS_OK),
    ("ignoring", "redirect"): (redirected(200, 206), PLAYS_OK),
    ("advertising", "redirect"): (redirected(200, 206), PLAYS_OK),
    ("chunked", "redirect"): (redirected(200, 206), PLAYS_OK),
    # The app never sees these bodies in redirect mode, only the probe's:
    # the request alone decides the play (README, "When a play counts").
    ("gzip", "redirect"): (redirected(200, 502), PLAYS_OK),
    ("empty", "redirect"): (redirected(200, 502), PLAYS_OK),
    ("nothing", "redirect"): (redirected(200, 502), PLAYS_OK),
}
PATHS = {"nothing": "/chunked/nothing"}


def check_stream_headers(response) -> None:
    """What every stream response of the app carries, whatever the origin."""
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in response.headers["Content-Security-Policy"]
    assert response.content_type.startswith("audio/"), response.content_type
    assert "Content-Encoding" not in response.headers


async def check_bytes(response, audio: bytes) -> None:
    """A 200 is the whole file; a 206 exactly the slice its Content-Range names."""
    body = await response.read()
    if response.status == 200:
        assert body == audio
        return
    match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", response.headers["Content-Range"])
    assert match, response.headers["Content-Range"]
    first, last = int(match[1]), int(match[2])
    assert match[3] in ("*", str(len(audio)))
    assert body == audio[first : last + 1]
    assert int(response.headers["Content-Length"]) == len(body)


async def play_count(app: web.Application, clip_id: int) -> int:
    await app[PLAYS].flush()
    return (await get_clip(app[POOL], clip_id))["play_count"]


async def listen(client, stream_url: str, visits: list, audio: bytes) -> list[list[int]]:
    """Replay a listener's visits; returns the statuses, visit by visit."""
    seen = []
    for visit in visits:
        statuses, target = [], None
        for wanted in visit:
            headers = {} if wanted is None else {"Range": wanted.format(last=len(audio) - 1)}
            url = target or stream_url
            async with client.session.get(url, headers=headers, allow_redirects=False) as response:
                statuses.append(response.status)
                if response.status == 302:
                    target = response.headers["Location"]
                elif target is None and response.status in (200, 206):
                    check_stream_headers(response)
                    await check_bytes(response, audio)
                elif target is None:
                    assert response.content_type == "application/problem+json"
        seen.append(statuses)
    return seen


@pytest.mark.parametrize("mode", ["proxy", "redirect"])
async def test_the_matrix(mode, settings, make_client, make_clip, origins, audio_dir, subtests):
    client = await make_client(settings.changed({"stream_mode": mode}))
    audio = (audio_dir / "big.mp3").read_bytes()
    stored_id = None  # one stored clip: its file may be catalogued once
    for (source, cell_mode), (statuses, plays) in MATRIX.items():
        if cell_mode != mode:
            continue
        for listener, visits in LISTENERS.items():
            with subtests.test(source=source, listener=listener):
                if source == "stored":
                    clip_id = stored_id = stored_id or await make_clip(media_path="big.mp3")
                else:
                    path = PATHS.get(source, f"/{source}/big.mp3")
                    clip_id = await make_clip(audio_url=str(origins.make_url(path)))
                before = await play_count(client.server.app, clip_id)
                stream_url = str(client.make_url(f"/clips/{clip_id}/stream"))
                seen = await listen(client, stream_url, visits, audio)
                assert seen == statuses[listener]
                assert await play_count(client.server.app, clip_id) - before == plays[listener]


# --- The play rule: the README's table, run ----------------------------------


def readme_play_table() -> list[tuple[str, dict[str, str], int, bool]]:
    """(method, headers, status, play) from the README's "When a play counts"."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### When a play counts", 1)[1].split("\n### ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        codes = re.findall(r"`([^`]+)`", cells[0])
        headers = dict(code.split(": ", 1) for code in codes[1:])
        status = int(re.match(r"\d+", cells[1])[0])
        rows.append((codes[0], headers, status, {"yes": True, "no": False}[cells[2]]))
    return rows


def test_the_readme_states_the_play_table():
    rows = readme_play_table()
    assert len(rows) >= 12
    assert any(play for *_, play in rows) and any(not play for *_, play in rows)


@pytest.mark.parametrize("mode", ["proxy", "redirect"])
async def test_the_readme_play_table_holds_for_every_source(
    mode, settings, make_client, make_clip, origins, audio_dir, subtests
):
    client = await make_client(settings.changed({"stream_mode": mode}))
    audio = (audio_dir / "big.mp3").read_bytes()
    sources = {"stored": await make_clip(media_path="big.mp3")}
    for kind in ("ranged", "ignoring"):
        sources[kind] = await make_clip(audio_url=str(origins.make_url(f"/{kind}/big.mp3")))
    for method, headers, status, play in readme_play_table():
        for source, clip_id in sources.items():
            with subtests.test(method=method, headers=headers, source=source):
                before = await play_count(client.server.app, clip_id)
                url = f"/clips/{clip_id}/stream"
                sent = headers
                if headers.get("If-None-Match") == "<its ETag>":
                    etag = (await client.head(url, allow_redirects=False)).headers.get("ETag")
                    sent = {"If-None-Match": etag or '"redirected"'}
                response = await client.request(method, url, headers=sent, allow_redirects=False)
                if mode == "redirect" and source != "stored" and not is_probe(sent):
                    # Played from the origin: the app redirects and the
                    # request alone decides (README), and a conditional GET
                    # is a cache revalidating its copy: never a play.
                    assert response.status == 302, response.headers
                    play = play and not {"If-None-Match", "If-Modified-Since"} & sent.keys()
                else:
                    assert response.status == status, response.headers
                    if status in (200, 206) and method == "GET":
                        check_stream_headers(response)
                        await check_bytes(response, audio)
                assert await play_count(client.server.app, clip_id) - before == int(play)


def is_probe(headers: dict[str, str]) -> bool:
    """A short range from byte 0, answered by the app in every mode."""
    match = re.fullmatch(r"bytes=0-(\d+)", headers.get("Range", ""))
    return match is not None and int(match[1]) + 1 < 64 * 1024


# --- RFC 9110 edges, on both sources ----------------------------------------


@pytest.fixture
async def both(make_clip, origins):
    """A stored clip and a remote one (on an origin honouring Range), same bytes."""
    return {
        "stored": await make_clip(media_path="big.mp3"),
        "remote": await make_clip(audio_url=str(origins.make_url("/ranged/big.mp3"))),
    }


@pytest.mark.parametrize("source", ["stored", "remote"])
async def test_suffix_ranges_at_their_edges(client, both, audio_dir, source, subtests):
    audio = (audio_dir / "big.mp3").read_bytes()
    url = f"/clips/{both[source]}/stream"
    for wanted, status, part in [
        ("bytes=-1", 206, audio[-1:]),
        ("bytes=-1000", 206, audio[-1000:]),
        (f"bytes=-{len(audio)}", 206, audio),
        (f"bytes=-{len(audio) + 1}", 206, audio),  # longer than the clip: all of it
        ("bytes=-0", 416, None),  # no bytes at all: unsatisfiable
        (f"bytes={len(audio) - 1}-", 206, audio[-1:]),
        (f"bytes={len(audio)}-", 416, None),
    ]:
        with subtests.test(range=wanted):
            response = await client.get(url, headers={"Range": wanted})
            assert response.status == status
            if part is None:
                assert response.headers["Content-Range"] == f"bytes */{len(audio)}"
            else:
                first = len(audio) - len(part)
                assert response.headers["Content-Range"] == (
                    f"bytes {first}-{len(audio) - 1}/{len(audio)}"
                )
                assert await response.read() == part


@pytest.mark.parametrize("source", ["stored", "remote"])
async def test_if_range_holds_only_for_the_current_version(client, both, source, subtests):
    url = f"/clips/{both[source]}/stream"
    current = (await client.head(url)).headers
    for if_range, status in [
        (current["ETag"], 206),
        ('"stale"', 200),
        (f"W/{current['ETag']}", 200),  # weak tags never match (§13.1.5)
        (current["Last-Modified"], 206),
        ("Sat, 01 Jan 2000 00:00:00 GMT", 200),
    ]:
        with subtests.test(if_range=if_range):
            response = await client.get(
                url, headers={"Range": "bytes=1000-1999", "If-Range": if_range}
            )
            assert response.status == status
            body = await response.read()
            assert len(body) == (1000 if status == 206 else int(current["Content-Length"]))


@pytest.mark.parametrize("source", ["stored", "remote"])
async def test_head_ignores_range_and_counts_nothing(client, both, app, source):
    url = f"/clips/{both[source]}/stream"
    response = await client.head(url, headers={"Range": "bytes=0-99"})
    assert response.status == 200
    assert response.headers["Content-Length"] == str(3 * 1024 * 1024 + 17)
    assert "Content-Range" not in response.headers
    assert await play_count(app, both[source]) == 0


async def test_head_tells_only_what_the_origins_head_says(client, make_clip, origins, app):
    """README ("Streaming"): HEAD is not a download; the empty body is
    found by GET."""
    clip_id = await make_clip(audio_url=str(origins.make_url("/chunked/nothing")))
    head = await client.head(f"/clips/{clip_id}/stream")
    assert head.status == 200
    assert "Content-Length" not in head.headers
    check_stream_headers(head)
    await read_problem(await client.get(f"/clips/{clip_id}/stream"), 502)
    assert await play_count(app, clip_id) == 0


# --- Origins that lie ----------------------------------------------------------


async def test_a_non_audio_type_is_never_passed_on(client, make_clip, origins):
    clip_id = await make_clip(
        audio_url=str(origins.make_url("/html/big.mp3")), content_type="audio/mpeg"
    )
    response = await client.get(f"/clips/{clip_id}/stream")
    assert response.status == 200
    assert response.headers["Content-Type"] == "audio/mpeg"  # the clip's, not text/html
    check_stream_headers(response)


async def test_an_encoded_body_is_refused_naming_the_coding(client, make_clip, origins, app):
    clip_id = await make_clip(audio_url=str(origins.make_url("/gzip/big.mp3")))
    response = await client.get(f"/clips/{clip_id}/stream")
    assert response.status == 502
    assert "gzip" in (await response.json())["detail"]
    assert await play_count(app, clip_id) == 0


async def test_an_origins_cache_control_is_never_weakened(
    client, make_clip, aiohttp_server, audio_dir
):
    async def private(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(
            audio_dir / "small.mp3", headers={"Cache-Control": "private, no-cache"}
        )

    app = web.Application()
    app.router.add_get("/private.mp3", private)
    origin = await aiohttp_server(app)
    clip_id = await make_clip(audio_url=str(origin.make_url("/private.mp3")))
    response = await client.get(f"/clips/{clip_id}/stream")
    assert response.status == 200
    assert response.headers.getall("Cache-Control") == ["no-store"]


# --- Origins whose first bytes never come -------------------------------------


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/trickle/big.mp3", {"Range": "bytes=0-99"}),  # a probe, cut here: 100 bytes in 100 s
        ("/trickle/big.mp3", {"Range": "bytes=0-1"}),  # Safari's, 2 s
        ("/silent/big.mp3", {}),  # headers, then nothing
    ],
)
async def test_first_bytes_that_do_not_come_in_time_are_504(
    client, make_clip, origins, app, path, headers
):
    """Before the first byte is sent the listener has no headers: the
    origin's first bytes get UPSTREAM_HEADERS_TIMEOUT (1 s in tests), not
    the stream's minutes, and a trickle never trips the per-read timeout."""
    clip_id = await make_clip(audio_url=str(origins.make_url(path)), duration_seconds=600)
    async with asyncio.timeout(5):
        body = await read_problem(
            await client.get(f"/clips/{clip_id}/stream", headers=headers), 504
        )
    assert "in time" in body["detail"]
    assert await play_count(app, clip_id) == 0


# --- A 206 must answer what was asked, and agree with itself -------------------


def part(first: int, last: int, length: int | None = None) -> str:
    """The path of an origin answering 206 `bytes first-last/SIZE`, with
    that slice of big.mp3 or only its first `length` bytes."""
    query = f"first={first}&last={last}" + ("" if length is None else f"&length={length}")
    return f"/part/big.mp3?{query}"


@pytest.mark.parametrize(
    ("method", "headers", "path", "status", "plays"),
    [
        # The range and the length disagree: Content-Length 1000, 100,000 declared.
        ("GET", {"Range": "bytes=0-"}, part(0, 99_999, length=1000), 502, 0),
        ("GET", {}, part(0, 99_999, length=1000), 502, 0),
        ("GET", {"Range": "bytes=0-"}, part(0, SIZE), 502, 0),  # past the end
        # Not what was asked.
        ("GET", {"Range": f"bytes={SEEK}-"}, part(0, SIZE - 1), 502, 0),
        ("GET", {"Range": "bytes=1000-1999"}, part(1000, 2999), 502, 0),
        ("GET", {"Range": "bytes=1000-1999"}, part(999, 1999), 502, 0),
        ("GET", {"Range": "bytes=-1000"}, part(0, 999), 502, 0),
        ("GET", {"Range": "bytes=-1000"}, part(SIZE - 1001, SIZE - 2), 502, 0),
        ("GET", {"Range": "bytes=-1000"}, part(SIZE - 2000, SIZE - 1), 502, 0),
        # A part when the app asked for the whole body.
        ("GET", {}, part(0, 99), 502, 0),
        ("HEAD", {}, part(0, 99), 502, 0),
        ("GET", {"Range": "bytes=-0"}, part(0, 99), 502, 0),
        ("GET", {"Range": f"bytes={SEEK}-", "If-Range": '"stale"'}, part(SEEK, SIZE - 1), 502, 0),
        # What was asked, so passed on.
        ("GET", {"Range": "bytes=-1000"}, part(SIZE - 1000, SIZE - 1), 206, 0),
        ("GET", {"Range": "bytes=-99999999"}, part(0, SIZE - 1), 206, 0),
        ("GET", {"Range": f"bytes={SEEK}-"}, part(SEEK, SIZE - 1), 206, 0),
        ("GET", {"Range": "bytes=0-"}, part(0, 99_999), 206, 1),  # capped early: allowed
        # All of it as a part, when all was asked: a 200.
        ("GET", {}, part(0, SIZE - 1), 200, 1),
        ("HEAD", {}, part(0, SIZE - 1), 200, 0),
        ("GET", {"Range": "bytes=-0"}, part(0, SIZE - 1), 416, 0),
        ("GET", {"Range": f"bytes={SEEK}-", "If-Range": '"stale"'}, part(0, SIZE - 1), 200, 0),
    ],
)
async def test_an_origins_part_is_checked_against_the_request(
    client, make_clip, origins, app, audio_dir, method, headers, path, status, plays
):
    audio = (audio_dir / "big.mp3").read_bytes()
    clip_id = await make_clip(audio_url=str(origins.make_url(path)))
    response = await client.request(method, f"/clips/{clip_id}/stream", headers=headers)
    if status in (200, 206):
        assert response.status == status, await response.text()
        check_stream_headers(response)
        if method == "GET":
            await check_bytes(response, audio)
        else:
            assert response.headers["Content-Length"] == str(SIZE)
            assert "Content-Range" not in response.headers
    elif method == "GET":
        await read_problem(response, status)
    else:
        assert response.status == status
        assert response.content_type == "application/problem+json"
    assert await play_count(app, clip_id) == plays


# --- Repeated header lines are one list (RFC 9110 §5.3) -------------------------


@pytest.fixture
async def three(make_clip, origins):
    """The same bytes stored, on an origin honouring Range and conditional
    requests, and on one ignoring both."""
    return {
        "stored": await make_clip(media_path="big.mp3"),
        **{
            kind: await make_clip(audio_url=str(origins.make_url(f"/{kind}/big.mp3")))
            for kind in ("ranged", "ignoring")
        },
    }


async def test_if_match_lines_are_one_list(client, make_clip, subtests):
    clip_id = await make_clip(audio_url="https://cdn.example.invalid/a.mp3")
    for lines, status in [
        (['"zzz"', "{current}"], 200),
        (["{current}", '"zzz"'], 200),
        (['"zzz"', '"yyy"'], 412),
        (['"zzz"', "W/{current}"], 412),
        ([""], 412),  # an empty list matches nothing
        (["", "{current}"], 200),  # empty elements are allowed in a list
        (['"zzz"', "*"], 412),  # `*` in a list is no valid field: nothing matches
    ]:
        with subtests.test(lines=lines):
            current = (await client.get(f"/clips/{clip_id}")).headers["ETag"]
            response = await client.patch(
                f"/clips/{clip_id}",
                json={"description": repr(lines)},
                headers=CIMultiDict(("If-Match", line.format(current=current)) for line in lines),
            )
            assert response.status == status, await response.text()
            body = await (await client.get(f"/clips/{clip_id}")).json()
            assert (body["description"] == repr(lines)) == (status == 200)


@pytest.mark.parametrize("source", ["stored", "ranged", "ignoring"])
async def test_if_none_match_lines_are_one_list(client, three, app, source, subtests):
    url = f"/clips/{three[source]}/stream"
    etag = (await client.head(url)).headers["ETag"]
    for lines, status in [
        (['"x"', etag], 304),
        ([etag, '"x"'], 304),
        (['"x"', '"y"'], 200),
        ([""], 200),  # matches nothing: the clip, and a play
    ]:
        with subtests.test(lines=lines):
            before = await play_count(app, three[source])
            response = await client.get(
                url, headers=CIMultiDict(("If-None-Match", line) for line in lines)
            )
            assert response.status == status
            assert await play_count(app, three[source]) - before == (status == 200)


@pytest.mark.parametrize("source", ["stored", "ranged", "ignoring"])
async def test_single_valued_fields_sent_twice_are_invalid(
    client, three, app, audio_dir, source, subtests
):
    """Two `Range` lines are one value with two ranges (ignored: the whole
    clip, a play); two `If-Range` lines cannot name one version (the whole
    clip); two `If-Modified-Since` lines are ignored (§13.1.3)."""
    audio = (audio_dir / "big.mp3").read_bytes()
    url = f"/clips/{three[source]}/stream"
    current = (await client.head(url)).headers
    for lines, plays in [
        ([("Range", "bytes=0-99"), ("Range", "bytes=100-199")], 1),
        ([("Range", f"bytes={SEEK}-"), ("Range", f"bytes={SEEK}-")], 1),
        (
            [
                ("Range", f"bytes={SEEK}-"),
                ("If-Range", current["ETag"]),
                ("If-Range", current["ETag"]),
            ],
            0,  # a seek whose If-Range fails: all of it, not a play (README table)
        ),
        ([("If-Modified-Since", current["Last-Modified"])] * 2, 1),
    ]:
        with subtests.test(lines=lines):
            before = await play_count(app, three[source])
            response = await client.get(url, headers=CIMultiDict(lines))
            assert response.status == 200
            check_stream_headers(response)
            await check_bytes(response, audio)
            assert await play_count(app, three[source]) - before == plays


# --- If-Match lists (RFC 9110 §13.1.1) ----------------------------------------


async def test_if_match_takes_a_list_and_only_strong_tags(client, make_clip, subtests):
    clip_id = await make_clip(audio_url="https://cdn.example.invalid/a.mp3")
    for listed, status in [
        ('"zzz", {current}', 200),
        ('"zzz",{current}', 200),
        ('"zzz" ,  {current}', 200),
        ("W/{current}", 412),
        ('"zzz"', 412),
        ("*", 200),
    ]:
        with subtests.test(if_match=listed):
            current = (await client.get(f"/clips/{clip_id}")).headers["ETag"]
            response = await client.patch(
                f"/clips/{clip_id}",
                json={"description": listed},
                headers={"If-Match": listed.format(current=current)},
            )
            assert response.status == status
            body = await (await client.get(f"/clips/{clip_id}")).json()
            assert (body["description"] == listed) == (status == 200)


# --- In a real Chromium --------------------------------------------------------


@pytest.mark.parametrize("source", ["stored", "remote"])
async def test_two_listens_in_one_browser_count_two(
    source, client, make_clip, origin, player, browser, app
):
    """Without no-store, Chromium's second visit sends nothing at all."""
    where = (
        {"media_path": "tune.wav"}
        if source == "stored"
        else {"audio_url": str(origin.make_url("/audio/tune.wav"))}
    )
    clip_id = await make_clip(content_type="audio/wav", duration_seconds=20.0, **where)
    stream_url = (await (await client.get(f"/clips/{clip_id}")).json())["stream_url"]
    page = str(player.with_query(src=stream_url, preload="auto"))
    for visit in (1, 2):
        await browser.navigate(page)
        state = await browser.wait_for(
            AUDIO_STATE, lambda s: s["error"] is not None or s["finite"], within=10
        )
        assert state["error"] is None, state
        assert await play_count(app, clip_id) == visit
    streams = [r for r in browser.requests if r.url == stream_url]
    assert len(streams) >= 2, streams


async def test_a_seek_on_an_origin_that_ignores_range_lands_and_counts_once(
    client, make_clip, aiohttp_server, media_dir, player, browser, app
):
    """4 minutes of WAV (10.6 MB) on an origin that always sends all of it:
    the app cuts the seek's range itself, so Chromium seeks to the middle
    instead of snapping back to 0, and the seek is not a play."""
    with wave.open(str(media_dir / "tune.wav"), "rb") as tune:
        params, frames = tune.getparams(), tune.readframes(tune.getnframes())
    long = io.BytesIO()
    with wave.open(long, "wb") as out:
        out.setparams(params)
        out.writeframes(frames * 12)

    async def whole(request: web.Request) -> web.Response:
        return web.Response(body=long.getvalue(), content_type="audio/wav")

    origin_app = web.Application()
    origin_app.router.add_get("/long.wav", whole)
    origin = await aiohttp_server(origin_app)
    clip_id = await make_clip(
        audio_url=str(origin.make_url("/long.wav")), content_type="audio/wav", duration_seconds=240
    )
    stream_url = (await (await client.get(f"/clips/{clip_id}")).json())["stream_url"]

    await browser.navigate(str(player.with_query(src=stream_url)))
    await browser.evaluate('document.querySelector("audio").play()')
    state = await browser.wait_for(
        AUDIO_STATE, lambda s: s["error"] is not None or s["time"] > 0.5, within=10
    )
    assert state["error"] is None and state["duration"] == pytest.approx(240, abs=0.1), state
    await browser.evaluate('document.querySelector("audio").currentTime = 120')
    state = await browser.wait_for(
        AUDIO_STATE,
        lambda s: s["error"] is not None or (s["time"] > 120.3 and not s["seeking"]),
        within=10,
    )
    assert state["error"] is None, state
    assert 120 <= state["time"] < 125, state  # landed near the target, not back at 0
    streams = [r for r in browser.requests if r.url == stream_url]
    assert any(r.range not in (None, "bytes=0-") for r in streams), streams  # a real seek
    assert await play_count(app, clip_id) == 1, streams


async def test_an_html_origin_cannot_run_script_on_the_api_origin(
    client, make_clip, aiohttp_server, browser
):
    """The stored XSS: an origin answering text/html with script, opened
    through its (signed, keyless) stream_url in a browser tab."""

    async def page(request: web.Request) -> web.Response:
        script = "window.pwned = true; fetch('/metrics');"
        return web.Response(text=f"<script>{script}</script>", content_type="text/html")

    evil = web.Application()
    evil.router.add_get("/clip.mp3", page)
    origin = await aiohttp_server(evil)
    clip_id = await make_clip(audio_url=str(origin.make_url("/clip.mp3")))
    stream_url = (await (await client.get(f"/clips/{clip_id}")).json())["stream_url"]

    await browser.navigate(stream_url)
    assert await browser.evaluate("typeof window.pwned") == "undefined"
    assert await browser.evaluate("document.querySelector('script')") is None
    assert not [r for r in browser.requests if r.url.endswith("/metrics")]


async def test_an_origins_undecodable_header_is_quoted_safely(client, make_clip, app):
    """Bytes that are not UTF-8 in an origin's header reach the problem's
    detail escaped: a 502 as problem+json, never a bare 500."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: audio/mpeg\r\nContent-Encoding: \xff\xfe\r\n"
            b"Content-Length: 4\r\nConnection: close\r\n\r\nabcd"
        )
        await writer.drain()
        writer.close()

    origin = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = origin.sockets[0].getsockname()[1]
    try:
        clip_id = await make_clip(audio_url=f"http://127.0.0.1:{port}/a.mp3")
        response = await client.get(f"/clips/{clip_id}/stream")
        assert response.status == 502
        assert response.content_type == "application/problem+json"
        assert "encoded body" in (await response.json())["detail"]
        assert await play_count(app, clip_id) == 0
    finally:
        origin.close()
        await origin.wait_closed()
