"""End to end in a real headless Chromium: an `<audio>` element plays a clip's
stream_url, learns its duration, seeks to the middle and keeps playing; the
clip's play count rises by exactly one. For a remote clip (piped from an
origin), a stored one, and a stored one's MP3 preview.

tune.wav (20 s, 0.9 MB) is the clip a listener would try; Chromium fetches
all of it with its first request, so its seek stays in the buffer. long.wav
(4 min, 10.6 MB) puts the middle beyond what Chromium buffers ahead: the seek
then reaches the server as `bytes=N-`, which must not count as a play.
"""

import io
import wave

import pytest
from aiohttp import web
from yarl import URL

from db.plays import PLAYS
from tests.audio import stereo_wav
from tests.browser import AUDIO_STATE
from tests.support import upload_form, wait_until

SECONDS = {"tune.wav": 20.0, "long.wav": 240.0}


@pytest.fixture
async def audio_url(aiohttp_server, origin, media_dir):
    """The URL of a file on a real origin: conftest's for tune.wav; for
    long.wav (made here, per test, so other tests never copy it) one serving
    this test's media_dir."""
    with wave.open(str(media_dir / "tune.wav"), "rb") as tune:
        params, frames = tune.getparams(), tune.readframes(tune.getnframes())
    with wave.open(str(media_dir / "long.wav"), "wb") as long:
        long.setparams(params)
        long.writeframes(frames * int(SECONDS["long.wav"] / SECONDS["tune.wav"]))
    app = web.Application()
    app.router.add_static("/audio", media_dir)
    long_origin = await aiohttp_server(app)

    def url(name: str) -> str:
        server = origin if name == "tune.wav" else long_origin
        return str(server.make_url(f"/audio/{name}"))

    return url


@pytest.mark.parametrize("audio", ["tune.wav", "long.wav"])
@pytest.mark.parametrize("source", ["remote", "stored"])
async def test_audio_plays_and_seeks_in_chromium(
    source, audio, client, audio_url, make_clip, plays, player, browser
):
    where = {"audio_url": audio_url(audio)} if source == "remote" else {"media_path": audio}
    clip_id = await make_clip(content_type="audio/wav", duration_seconds=SECONDS[audio], **where)
    stream_url = (await (await client.get(f"/clips/{clip_id}")).json())["stream_url"]
    assert URL(stream_url).host == "127.0.0.1"

    await browser.navigate(str(player.with_query(src=stream_url)))
    await browser.evaluate('document.querySelector("audio").play()')
    state = await browser.wait_for(
        AUDIO_STATE, lambda s: s["error"] is not None or s["time"] > 1.0, within=10
    )
    assert state["error"] is None, state
    assert state["finite"], state
    assert state["duration"] == pytest.approx(SECONDS[audio], abs=0.05)

    middle = state["duration"] / 2
    await browser.evaluate(f'document.querySelector("audio").currentTime = {middle}')
    state = await browser.wait_for(
        AUDIO_STATE,
        lambda s: (
            s["error"] is not None
            or (s["time"] > middle + 0.5 and not s["paused"] and not s["seeking"])
        ),
        within=10,
    )
    assert state["error"] is None, state
    # It jumped rather than played through: nothing between 3 s and the
    # middle was ever played.
    assert all(end < 3.0 or start >= middle - 0.1 for start, end in state["played"]), state

    streams = [r for r in browser.requests if r.url == stream_url]
    print(f"\n{source} {audio}: {[(r.method, r.range, r.status) for r in streams]}")
    assert streams[0].range == "bytes=0-", streams
    assert all(r.status in (200, 206) for r in streams if r.status is not None), streams
    if audio == "long.wav":
        assert any(r.range != "bytes=0-" for r in streams), f"the seek never reached us: {streams}"

    await plays.flush()
    clip = await (await client.get(f"/clips/{clip_id}")).json()
    assert clip["play_count"] == 1, streams


async def test_the_preview_plays_and_seeks_and_counts_once(settings, make_client, player, browser):
    """An uploaded 20 s WAV: once its preview is ready, stream_url plays the
    MP3 in Chromium, seeks in it, and the listen counts once."""
    client = await make_client(settings.changed({"job_workers": 1, "job_poll_seconds": 0.2}))
    form = upload_form(io.BytesIO(stereo_wav()), "take.wav")
    created = await (await client.post("/clips", data=form)).json()

    async def ready():
        clip = await (await client.get(f"/clips/{created['id']}")).json()
        return clip if clip["preview"]["status"] == "ready" else None

    clip = await wait_until(ready, "the preview", seconds=30, interval=0.1)
    await browser.navigate(str(player.with_query(src=clip["stream_url"])))
    await browser.evaluate('document.querySelector("audio").play()')
    state = await browser.wait_for(
        AUDIO_STATE, lambda s: s["error"] is not None or s["time"] > 1.0, within=10
    )
    assert state["error"] is None, state
    assert state["duration"] == pytest.approx(20.0, abs=0.1)
    await browser.evaluate('document.querySelector("audio").currentTime = 12')
    state = await browser.wait_for(
        AUDIO_STATE,
        lambda s: s["error"] is not None or (s["time"] > 12.5 and not s["seeking"]),
        within=10,
    )
    assert state["error"] is None, state
    assert all(end < 3.0 or start >= 11.9 for start, end in state["played"]), state

    streams = [r for r in browser.requests if r.url == clip["stream_url"]]
    assert streams and all(r.status in (200, 206) for r in streams if r.status), streams
    await client.server.app[PLAYS].flush()
    clip = await (await client.get(f"/clips/{clip['id']}")).json()
    assert clip["play_count"] == 1, streams


async def test_a_signed_stream_url_plays_with_keys_enforced(
    settings, make_client, make_clip, player, browser
):
    """With API keys on, a page's `<audio src>` cannot send a key: the signed
    stream_url alone must play it, and the same URL without its signature
    must not."""
    read_key = "reader-key-0123456789"
    client = await make_client(
        settings.changed({"api_keys": f"read:{read_key}", "stream_url_secret": ("s" * 32,)})
    )
    clip_id = await make_clip(
        media_path="tune.wav", content_type="audio/wav", duration_seconds=SECONDS["tune.wav"]
    )
    headers = {"Authorization": f"Bearer {read_key}"}
    clip = await (await client.get(f"/clips/{clip_id}", headers=headers)).json()
    stream_url = URL(clip["stream_url"])
    assert {"exp", "sig"} <= set(stream_url.query)
    assert (await client.get(stream_url.with_query(None).path)).status == 401

    await browser.navigate(str(player.with_query(src=str(stream_url))))
    await browser.evaluate('document.querySelector("audio").play()')
    state = await browser.wait_for(
        AUDIO_STATE, lambda s: s["error"] is not None or s["time"] > 1.0, within=10
    )
    assert state["error"] is None, state
    assert state["duration"] == pytest.approx(SECONDS["tune.wav"], abs=0.05)

    await client.server.app[PLAYS].flush()
    clip = await (await client.get(f"/clips/{clip_id}", headers=headers)).json()
    assert clip["play_count"] == 1


# What the docs page must show: every operation, the two ways to send a key,
# and the largest id exactly (JavaScript numbers round 2**63 - 1).
EXPAND_EVERYTHING = """(() => {
    document.querySelectorAll(".opblock-summary-control").forEach(b => b.click());
    document.querySelectorAll(".models .json-schema-2020-12-expand-deep-button")
        .forEach(b => b.click());
})()"""


async def test_docs_page_renders_every_operation_offline(client, browser):
    """/docs is Swagger UI from the app's own files: every operation in
    /openapi.json becomes a block, the security schemes are offered, ids are
    int64 and never rounded, and the page asks nothing of any other host and
    logs no error (CSP violations included)."""
    spec = await (await client.get("/openapi.json")).json()
    operations = [(m, p) for p, item in spec["paths"].items() for m in item]
    docs = client.make_url("/docs")

    await browser.navigate(str(docs))
    count = 'document.querySelectorAll(".opblock").length'
    assert await browser.wait_for(count, lambda n: n >= len(operations), within=10) == len(
        operations
    )
    shown = await browser.evaluate(
        """Array.from(document.querySelectorAll(".opblock"), b => [
            b.querySelector(".opblock-summary-method").textContent.toLowerCase(),
            b.querySelector(".opblock-summary-path").dataset.path])"""
    )
    assert sorted(map(tuple, shown)) == sorted(operations)

    await browser.evaluate('document.querySelector(".btn.authorize").click()')
    schemes = await browser.wait_for(
        'Array.from(document.querySelectorAll(".auth-container h4"), h => h.textContent)',
        lambda names: len(names) == 2,
        within=5,
    )
    assert [name.split()[0] for name in schemes] == ["bearer", "apiKey"]
    await browser.evaluate('document.querySelector(".auth-btn-wrapper .btn-done").click()')

    await browser.evaluate(EXPAND_EVERYTHING)
    # Rendering every operation and schema deep takes Swagger UI seconds of
    # CPU (more with the peaks route and the preview shape): on a loaded
    # two-core machine 10 s was seen to fall short.
    text = await browser.wait_for(
        "document.body.innerText",
        lambda t: "integer($int64)" in t and "Example Value" in t and '"sha256"' in t,
        within=30,
    )
    assert "9223372036854775807" in text and "9223372036854776000" not in text

    assert browser.requests and all(
        URL(r.url).origin() == docs.origin() for r in browser.requests if r.url.startswith("http")
    ), [r.url for r in browser.requests]
    answered = [r for r in browser.requests if r.url.startswith("http") and r.status is not None]
    assert all(r.status in (200, 204, 304) for r in answered), browser.requests
    assert browser.errors == []
