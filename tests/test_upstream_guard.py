"""SSRF: the service never fetches from internal addresses it was not told to allow."""

import ipaddress
import socket

import pytest
import yarl
from aiohttp import web
from aiohttp.abc import AbstractResolver

from streaming.upstream import UPSTREAM, UpstreamGuard, UpstreamRefused, literal_address
from tests.scrape import metric, scrape
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


# --- IPv6 forms that carry an IPv4 address (issue 14, finding 3) ------------
#
# Each carries 169.254.169.254 (cloud metadata) or another internal IPv4
# address; the guard judges it by that address, not by Python's is_global.
CARRIERS = {
    "nat64": "64:ff9b::a9fe:a9fe",  # NAT64 well-known prefix (RFC 6052)
    "nat64-dotted": "64:ff9b::169.254.169.254",
    "nat64-local-use": "64:ff9b:1::a9fe:a9fe",  # RFC 8215, IPv4 in the last 32 bits
    "nat64-local-use-48": "64:ff9b:1:a9fe:a9:fe00::",  # an RFC 6052 /48 layout in it
    "ipv4-compatible": "::a9fe:a9fe",  # deprecated ::/96
    "ipv4-compatible-loopback": "::127.0.0.1",
    "ipv4-mapped": "::ffff:a9fe:a9fe",
    "siit": "::ffff:0:a9fe:a9fe",  # IPv4-translated ::ffff:0:0:0/96 (RFC 2765)
    "6to4": "2002:a9fe:a9fe::1",  # bits 16-47
    "teredo-client": "2001:0:808:808::5601:5601",  # client XORed: 169.254.169.254
    "teredo-server": "2001:0:a9fe:a9fe::f7f7:f7f7",  # server 169.254.169.254, client 8.8.8.8
    "isatap": "2606:4700::5efe:a9fe:a9fe",  # public /64, ISATAP interface id
    "isatap-u-bit": "2606:4700::200:5efe:a9fe:a9fe",
    "isatap-g-bit": "2606:4700::100:5efe:a9fe:a9fe",
    "isatap-private": "2606:4700::200:5efe:10.0.0.1",
}


class Answers(AbstractResolver):
    """A resolver whose every answer is one address: what a hostile or
    internal DNS (DNS64 included) can answer for any name."""

    def __init__(self, address: str):
        self.address = address

    async def resolve(self, host, port=0, family=socket.AF_INET):
        ip = ipaddress.ip_address(self.address)
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        return [
            {
                "hostname": host,
                "host": str(ip),
                "port": port,
                "family": family,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        pass


def answering(client, address: str) -> None:
    """Make the app's DNS answer `address` for every name; the guard's
    GuardedResolver judges the answer as it would a real one."""
    client.server.app[UPSTREAM].resolver._resolver = Answers(address)


@pytest.mark.parametrize("address", CARRIERS.values(), ids=CARRIERS.keys())
async def test_create_refuses_an_ipv6_form_carrying_an_internal_ipv4(guarded_client, address):
    answering(guarded_client, address)
    for url in (f"http://[{address}]/x", "http://media.example.test/x"):
        body = {"title": "Sneaky", "genre": "rock", "duration_seconds": 10, "audio_url": url}
        problem = await read_problem(await guarded_client.post("/clips", json=body), 400)
        assert error_fields(problem) == ["audio_url"], url
    assert await (await guarded_client.get("/clips")).json() == []


@pytest.mark.parametrize("address", CARRIERS.values(), ids=CARRIERS.keys())
async def test_connect_refuses_an_ipv6_form_carrying_an_internal_ipv4(
    guarded_client, make_clip, address
):
    """A clip stored before the policy (or a name whose DNS answer changed):
    refused when played, by the guard, not by a failing connection."""
    answering(guarded_client, address)
    for url in (f"http://[{address}]/x", "http://media.example.test/x"):
        clip_id = await make_clip(audio_url=url)
        await read_problem(await guarded_client.get(f"/clips/{clip_id}/stream"), 502)
    text = await scrape(guarded_client)
    assert metric(text, "clips_upstream_requests_total", outcome="refused") == 2
    assert metric(text, "clips_upstream_requests_total", outcome="connect_error") == 0


# The IANA special-purpose registries' entries that are not globally
# reachable (and multicast, site-local, reserved space), one address each.
NOT_GLOBAL = [
    "0.1.2.3", "192.0.0.1", "192.0.0.170", "192.0.2.1", "192.88.99.1", "198.18.0.1",
    "198.51.100.1", "203.0.113.1", "240.0.0.1", "255.255.255.255", "239.1.1.1",
    "[100::1]", "[2001:2::1]", "[2001:10::1]", "[2001:db8::1]", "[3fff::1]", "[5f00::1]",
    "[2001:1::4]", "[fec0::1]", "[ff0e::1]", "[4000::1]", "[fe80::1%25eth0]",
]  # fmt: skip
GLOBAL = [
    "8.8.8.8", "192.0.0.9", "192.31.196.1", "[2606:4700::1111]", "[2001:4:112::1]",
    "[2001:1::1]", "[2001:20::1]", "[2620:4f:8000::1]",
    "[64:ff9b::808:808]", "[2002:808:808::1]", "[2001:0:808:808::f7f7:f7f7]",
    "[2606:4700::200:5efe:808:808]",
]  # fmt: skip


@pytest.mark.parametrize("host", NOT_GLOBAL)
def test_the_registries_non_global_entries_are_refused(host):
    with pytest.raises(UpstreamRefused):
        UpstreamGuard(()).check_url(yarl.URL(f"http://{host}/a.mp3"))


@pytest.mark.parametrize("host", GLOBAL)
def test_global_addresses_and_forms_carrying_public_ipv4_are_allowed(host):
    UpstreamGuard(()).check_url(yarl.URL(f"http://{host}/a.mp3"))


async def test_upstream_allow_judges_a_carried_address_too(settings, make_client):
    """The operator's override applies to what a form carries: allowing
    169.254.0.0/16 allows its NAT64 spelling; allowing the NAT64 network
    itself allows that spelling alone."""
    client = await make_client(settings.changed({"upstream_allow": ("169.254.0.0/16",)}))
    body = {"title": "Metadata", "genre": "rock", "duration_seconds": 10}
    allowed = await client.post(
        "/clips", json={**body, "audio_url": "http://[64:ff9b::a9fe:a9fe]/x"}
    )
    assert allowed.status == 201
    refused = await client.post("/clips", json={**body, "audio_url": "http://[64:ff9b::a00:1]/x"})
    assert error_fields(await read_problem(refused, 400)) == ["audio_url"]


@pytest.mark.parametrize("host", ["a..b", "x" * 64 + ".example.com", "-" * 254])
async def test_a_host_no_dns_could_hold_is_400_on_create_and_edit(guarded_client, make_clip, host):
    """Empty or over-long labels cannot be resolved (IDNA refuses them): a
    client mistake named on audio_url, never a 500."""
    body = {"title": "Odd", "genre": "rock", "duration_seconds": 10}
    url = f"https://{host}/a.mp3"
    created = await guarded_client.post("/clips", json={**body, "audio_url": url})
    assert error_fields(await read_problem(created, 400)) == ["audio_url"]
    clip_id = await make_clip(audio_url="https://cdn.example.invalid/a.mp3")
    edited = await guarded_client.patch(f"/clips/{clip_id}", json={"audio_url": url})
    assert error_fields(await read_problem(edited, 400)) == ["audio_url"]


@pytest.mark.parametrize("location", ["http://a:99999/", "http://[::1/", "http://\\xff/"])
async def test_an_origins_invalid_redirect_is_502(client, make_clip, aiohttp_server, location):
    async def moved(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": location})

    app = web.Application()
    app.router.add_get("/moved.mp3", moved)
    origin = await aiohttp_server(app)
    clip_id = await make_clip(audio_url=str(origin.make_url("/moved.mp3")))
    body = await read_problem(await client.get(f"/clips/{clip_id}/stream"), 502)
    assert "invalid redirect" in body["detail"]
