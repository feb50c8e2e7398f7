"""API keys, roles, signed stream URLs and CORS, against the real app."""

import time

import pytest
import yarl

from db import POOL
from db.plays import PLAYS
from settings import parse_keys
from tests.support import read_problem
from web.auth import ApiKeys, StreamSigner

READ_KEY = "read-key-0123456789abcdef"
WRITE_KEY = "write-key-0123456789abcdef"
SECRET = "stream-secret-0123456789"
NEW_CLIP = {"title": "T", "genre": "rock", "duration_seconds": 5.0,
            "audio_url": "https://cdn.example.invalid/t.mp3"}  # fmt: skip


@pytest.fixture
async def keyed(settings, make_client):
    return await make_client(
        settings.changed(
            {
                "api_keys": f"read:{READ_KEY},write:{WRITE_KEY}",
                "stream_url_secret": (SECRET,),
                "cors_origins": ("https://app.example.com",),
            }
        )
    )


@pytest.fixture
async def clip_id(make_clip):
    return await make_clip(media_path="small.mp3")  # its title: "A clip"


def bearer(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


# Each route, and who may use it: reads need a read or a write key...
READ_ROUTES = [("GET", "/clips"), ("GET", "/clips/{id}"), ("GET", "/clips/{id}/stats"),
               ("GET", "/clips/{id}/stream"), ("HEAD", "/clips/{id}/stream")]  # fmt: skip
# ...writes a write key: the body each sends, what a write key gets, and the
# titles the catalogue holds afterwards (it starts with clip_id's alone).
WRITES = {
    ("POST", "/clips"): (NEW_CLIP, 201, ["A clip", "T"]),
    ("PATCH", "/clips/{id}"): ({"title": "Renamed"}, 200, ["Renamed"]),
    ("DELETE", "/clips/{id}"): (None, 204, []),
}
WRITE_ROUTES = list(WRITES)


async def send(client, method: str, path: str, clip_id: int, key: str | None):
    body = WRITES.get((method, path), (None,))[0]
    return await client.request(method, path.format(id=clip_id), json=body, headers=bearer(key))


async def catalogue(client) -> list[dict]:
    """Every row of the clips table, once the plays the app holds are written:
    what a refused request must leave as it was."""
    await client.server.app[PLAYS].flush()
    return [
        dict(row) for row in await client.server.app[POOL].fetch("SELECT * FROM clips ORDER BY id")
    ]


@pytest.mark.parametrize(("method", "path"), READ_ROUTES + WRITE_ROUTES)
async def test_no_key_is_401_with_a_challenge_and_changes_nothing(
    keyed, clip_id, media_dir, method, path
):
    before = await catalogue(keyed)
    response = await send(keyed, method, path, clip_id, None)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    if method != "HEAD":
        await read_problem(response, 401)
    assert await catalogue(keyed) == before  # no row added, changed, removed or played
    assert (media_dir / "small.mp3").exists()


@pytest.mark.parametrize(("method", "path"), READ_ROUTES + WRITE_ROUTES)
async def test_an_unknown_key_is_401_and_changes_nothing(keyed, clip_id, media_dir, method, path):
    before = await catalogue(keyed)
    response = await send(keyed, method, path, clip_id, "not-a-key-but-long-enough")
    assert response.status == 401
    if method != "HEAD":
        await read_problem(response, 401)
    assert await catalogue(keyed) == before
    assert (media_dir / "small.mp3").exists()


@pytest.mark.parametrize(("method", "path"), READ_ROUTES)
@pytest.mark.parametrize("key", [READ_KEY, WRITE_KEY])
async def test_read_and_write_keys_read(keyed, clip_id, method, path, key):
    response = await send(keyed, method, path, clip_id, key)
    assert response.status == 200


@pytest.mark.parametrize(("method", "path"), WRITE_ROUTES)
async def test_a_read_key_cannot_write_and_changes_nothing(keyed, clip_id, media_dir, method, path):
    before = await catalogue(keyed)
    response = await send(keyed, method, path, clip_id, READ_KEY)
    await read_problem(response, 403)
    assert await catalogue(keyed) == before
    assert (media_dir / "small.mp3").exists()
    shown = await keyed.get(f"/clips/{clip_id}", headers=bearer(READ_KEY))
    assert (await shown.json())["title"] == "A clip"


@pytest.mark.parametrize(("method", "path"), WRITE_ROUTES)
async def test_a_write_key_writes(keyed, clip_id, method, path):
    _, status, titles = WRITES[(method, path)]
    response = await send(keyed, method, path, clip_id, WRITE_KEY)
    assert response.status == status, await response.text()
    assert [row["title"] for row in await catalogue(keyed)] == titles


async def test_x_api_key_header_works_too(keyed, clip_id):
    response = await keyed.get(f"/clips/{clip_id}", headers={"X-API-Key": READ_KEY})
    assert response.status == 200


async def test_health_and_readiness_stay_open(keyed):
    assert (await keyed.get("/healthz")).status == 200
    assert (await keyed.get("/readyz")).status == 200


def test_keys_are_kept_as_digests_and_compared_in_constant_time(monkeypatch):
    keys = ApiKeys(parse_keys(f"read:{READ_KEY}\n# a comment\nwrite:{WRITE_KEY}", "test"))
    assert READ_KEY not in repr(vars(keys)) and WRITE_KEY not in repr(vars(keys))
    compared = []
    import web.auth as auth

    real = auth.hmac.compare_digest
    monkeypatch.setattr(auth.hmac, "compare_digest", lambda a, b: compared.append(1) or real(a, b))
    assert keys.role_of(READ_KEY) == "read"  # matches the first key...
    assert len(compared) == 2  # ...and is still compared with every other one
    assert keys.role_of("x" * 20) is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("admin:0123456789abcdef", "entry 1"),
        ("read:short", "16+"),
        ("read0123456789abcdef", "entry 1"),
    ],
)
def test_bad_key_entries_are_refused_without_echoing_keys(text, problem):
    with pytest.raises(ValueError, match=problem) as error:
        parse_keys(text, "API_KEYS")
    assert "0123456789abcdef" not in str(error.value)


# --- Signed stream URLs ------------------------------------------------------


async def signed_url(keyed, clip_id: int) -> yarl.URL:
    clip = await (await keyed.get(f"/clips/{clip_id}", headers=bearer(READ_KEY))).json()
    url = yarl.URL(clip["stream_url"])
    assert {"exp", "sig"} <= set(url.query)
    return url


async def test_a_signed_stream_url_plays_without_a_key(keyed, clip_id, audio_dir):
    url = await signed_url(keyed, clip_id)
    response = await keyed.get(url.path_qs)
    assert response.status == 200
    assert await response.read() == (audio_dir / "small.mp3").read_bytes()


async def test_a_signature_opens_only_the_stream(keyed, clip_id):
    url = await signed_url(keyed, clip_id)
    response = await keyed.get(f"/clips/{clip_id}?{url.query_string}")
    assert response.status == 401


async def test_tampered_expired_and_cross_clip_signatures_are_403(
    keyed, clip_id, make_clip, subtests
):
    other = await make_clip(media_path="big.mp3")
    url = await signed_url(keyed, clip_id)
    exp, sig = url.query["exp"], url.query["sig"]
    tampered_sig = ("A" if sig[0] != "A" else "B") + sig[1:]
    cases = [
        f"/clips/{clip_id}/stream?exp={exp}&sig={tampered_sig}",
        f"/clips/{clip_id}/stream?exp={int(exp) + 1}&sig={sig}",  # later expiry
        f"/clips/{other}/stream?exp={exp}&sig={sig}",  # another clip
        f"/clips/{clip_id}/stream?exp={exp}",
    ]
    expired = StreamSigner((SECRET,), 60).sign(clip_id, now=time.time() - 3600)
    cases.append(f"/clips/{clip_id}/stream?exp={expired['exp']}&sig={expired['sig']}")
    for path in cases:
        with subtests.test(path=path):
            await read_problem(await keyed.get(path), 403)


async def test_rotation_accepts_old_and_new_secrets(settings, make_client, clip_id):
    common = {"api_keys": f"read:{READ_KEY}", "stream_url_ttl": 3600}
    old = await make_client(settings.changed({**common, "stream_url_secret": (SECRET,)}))
    rotated = await make_client(
        settings.changed({**common, "stream_url_secret": ("new-secret-0123456789", SECRET)})
    )
    old_url = await signed_url(old, clip_id)
    assert (await rotated.get(old_url.path_qs)).status == 200
    new_url = await signed_url(rotated, clip_id)
    assert new_url.query["sig"] != old_url.query["sig"]
    assert (await rotated.get(new_url.path_qs)).status == 200
    assert (await old.get(new_url.path_qs)).status == 403


def test_signed_urls_are_stable_for_a_while():
    signer = StreamSigner((SECRET,), 3600)  # expiries round up to 6-minute steps
    first = signer.sign(7, now=1_000_000)
    assert signer.sign(7, now=1_000_050) == first
    assert signer.verify(7, first["exp"], first["sig"], now=1_000_050)
    assert not signer.verify(7, first["exp"], first["sig"], now=int(first["exp"]) + 1)


# --- CORS ----------------------------------------------------------------------


async def test_preflight_from_an_allowed_origin_needs_no_key(keyed):
    response = await keyed.options(
        "/clips",
        headers={
            "Origin": "https://app.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert response.status == 204
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in response.headers["Access-Control-Allow-Headers"]


async def test_preflight_from_a_refused_origin_gets_no_cors_headers(keyed):
    response = await keyed.options(
        "/clips",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
    )
    assert response.status == 403
    assert "Access-Control-Allow-Origin" not in response.headers


async def test_responses_and_streams_expose_headers_to_allowed_origins(keyed, clip_id):
    origin = {"Origin": "https://app.example.com"}
    listing = await keyed.get("/clips?limit=1", headers={**origin, **bearer(READ_KEY)})
    stream = await keyed.get(
        f"/clips/{clip_id}/stream", headers={**origin, **bearer(READ_KEY), "Range": "bytes=0-"}
    )
    for response in (listing, stream):
        assert response.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
        exposed = response.headers["Access-Control-Expose-Headers"]
        for name in ("Link", "Content-Range", "Accept-Ranges", "Content-Length"):
            assert name in exposed
    refused = await keyed.get(
        "/clips", headers={"Origin": "https://evil.example", **bearer(READ_KEY)}
    )
    assert "Access-Control-Allow-Origin" not in refused.headers


async def test_no_cors_headers_without_cors_origins(client):
    response = await client.get("/clips", headers={"Origin": "https://app.example.com"})
    assert "Access-Control-Allow-Origin" not in response.headers
