"""SSRF: the service never fetches from internal addresses it was not told to allow."""

import ipaddress

import pytest
import yarl
from aiohttp import web

from streaming.upstream import UpstreamGuard, UpstreamRefused, literal_address
from tests.support import error_fields, read_problem

# Every spelling of an internal address a URL can carry. {port} is the port
# of a real origin listening on 127.0.0.1, so a guard that let one through
# would be caught by the origin seeing a request.
INWARD = [
    "http://127.0.0.1:{port}/a.mp3",
    "http://localhost:{port}/a.mp3",  # a name that resolves inward
    "http://LOCALHOST.:{port}/a.mp3",
    "http://2130706433:{port}/a.mp3",  # decimal
    "http://0x7f000001:{port}/a.mp3",  # hex
    "http://0x7f.0.0.1:{port}/a.mp3",
    "http://017700000001:{port}/a.mp3",  # octal
    "http://0177.0.0.1:{port}/a.mp3",
    "http://127.1:{port}/a.mp3",  # short form
    "http://[::ffff:127.0.0.1]:{port}/a.mp3",  # IPv4-mapped IPv6
    "http://[::1]:{port}/a.mp3",
]


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("[::ffff:10.0.0.1]", "::ffff:10.0.0.1"),
        ("example.com", None),
    ],
)
def test_literal_address_reads_every_ipv4_spelling(host, address):
    expected = ipaddress.ip_address(address) if address else None
    assert literal_address(host) == expected


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/a.mp3",
        "http://192.168.1.1/a.mp3",
        "http://172.16.0.1/a.mp3",
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata
        "http://100.64.0.1/a.mp3",  # carrier-grade NAT
        "http://0.0.0.0/a.mp3",
        "http://224.0.0.1/a.mp3",  # multicast
        "http://[fe80::1]/a.mp3",  # link-local
        "http://[fc00::1]/a.mp3",  # unique local
        "http://[::]/a.mp3",
        "http://[2002:a00:1::]/a.mp3",  # 6to4 wrapping 10.0.0.1
        "ftp://8.8.8.8/a.mp3",
        "file:///etc/passwd",
        "http://user:secret@8.8.8.8/a.mp3",
    ],
)
def test_guard_refuses_internal_and_odd_urls(url):
    with pytest.raises(UpstreamRefused):
        UpstreamGuard(()).check_url(yarl.URL(url))


def test_guard_allows_public_addresses_and_the_allow_list():
    UpstreamGuard(()).check_url(yarl.URL("https://8.8.8.8/a.mp3"))
    UpstreamGuard(()).check_url(yarl.URL("https://[2606:4700::1111]/a.mp3"))
    allow = UpstreamGuard(("10.1.0.0/16", "media.internal"))
    allow.check_url(yarl.URL("http://10.1.2.3/a.mp3"))
    allow.check_url(yarl.URL("http://media.internal/a.mp3"))
    with pytest.raises(UpstreamRefused):
        allow.check_url(yarl.URL("http://10.2.0.1/a.mp3"))


@pytest.fixture
async def watched_origin(aiohttp_server):
    """An origin on 127.0.0.1 that counts every request reaching it."""
    seen: list[str] = []

    async def audio(request):
        seen.append(str(request.url))
        return web.Response(body=b"\xff\xfb" * 1000, content_type="audio/mpeg")

    async def redirect(request):
        seen.append(str(request.url))
        raise web.HTTPFound(request.query["to"])

    app = web.Application()
    app.add_routes([web.get("/a.mp3", audio), web.get("/redirect", redirect)])
    server = await aiohttp_server(app)
    server.seen = seen
    return server


@pytest.fixture
async def guarded_client(settings, make_client):
    """The app with production's default: no internal address allowed."""
    return await make_client(settings.changed({"upstream_allow": ()}))


@pytest.mark.parametrize("template", INWARD)
async def test_stream_never_reaches_an_inward_address(
    guarded_client, make_clip, watched_origin, template
):
    url = template.format(port=watched_origin.port)
    clip_id = await make_clip(audio_url=url)
    await read_problem(await guarded_client.get(f"/clips/{clip_id}/stream"), 502)
    assert watched_origin.seen == []


@pytest.mark.parametrize("template", INWARD)
async def test_create_refuses_an_inward_audio_url(guarded_client, watched_origin, template):
    url = template.format(port=watched_origin.port)
    body = {"title": "Sneaky", "genre": "rock", "duration_seconds": 10, "audio_url": url}
    problem = await read_problem(await guarded_client.post("/clips", json=body), 400)
    assert error_fields(problem) == ["audio_url"]
    listing = await (await guarded_client.get("/clips")).json()
    assert listing == []


async def test_redirect_to_an_internal_host_is_refused(
    settings, make_client, make_clip, watched_origin
):
    # Only the name "localhost" is allowed: the first hop goes there, and the
    # redirect to the same machine spelled as an IP literal must be refused.
    by_name = settings.changed({"upstream_allow": ("localhost",)})
    client = await make_client(by_name)
    target = f"http://127.0.0.1:{watched_origin.port}/a.mp3"
    clip_id = await make_clip(
        audio_url=f"http://localhost:{watched_origin.port}/redirect?to={target}"
    )
    problem = await read_problem(await client.get(f"/clips/{clip_id}/stream"), 502)
    assert "not a public address" in problem["detail"]
    assert [yarl.URL(u).path for u in watched_origin.seen] == ["/redirect"]


async def test_a_name_that_does_not_resolve_yet_is_accepted_and_checked_when_played(
    guarded_client,
):
    body = {
        "title": "Later",
        "genre": "rock",
        "duration_seconds": 10,
        "audio_url": "https://cdn.example.invalid/a.mp3",
    }
    created = await guarded_client.post("/clips", json=body)
    assert created.status == 201
    clip = await created.json()
    await read_problem(await guarded_client.get(f"/clips/{clip['id']}/stream"), 502)
