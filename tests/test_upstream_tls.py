"""HTTPS origins behind a private CA: UPSTREAM_CA_BUNDLE adds the CAs an
origin's certificate is checked against, and never turns checking off.

A real HTTPS origin on loopback with a certificate from a throwaway CA
(trustme); the app is the real one, streaming through its shared session.
"""

import ssl
from pathlib import Path

import pytest
import trustme
from aiohttp import web

from settings import Settings
from tests.support import read_problem


@pytest.fixture(scope="module")
def private_ca() -> trustme.CA:
    return trustme.CA(organization_name="Soundverse test CA")


@pytest.fixture
async def https_origin(aiohttp_server, audio_dir, private_ca):
    """Static audio over HTTPS, its certificate for 127.0.0.1 signed by
    `private_ca`, which no system store trusts."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    private_ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    app = web.Application()
    app.router.add_static("/audio", audio_dir)
    return await aiohttp_server(app, ssl=context)


@pytest.fixture
def bundle(tmp_path, private_ca) -> Path:
    path = tmp_path / "private-ca.pem"
    private_ca.cert_pem.write_to_path(str(path))
    return path


async def test_without_the_bundle_the_stream_is_a_502_naming_tls(client, make_clip, https_origin):
    assert https_origin.scheme == "https"
    clip_id = await make_clip(audio_url=str(https_origin.make_url("/audio/big.mp3")))
    problem = await read_problem(await client.get(f"/clips/{clip_id}/stream"), 502)
    assert problem["detail"] == (
        "The clip's audio origin failed TLS: its certificate could not be verified"
    )


async def test_with_the_bundle_the_bytes_arrive_identical(
    settings, make_client, make_clip, https_origin, bundle, audio_dir
):
    client = await make_client(settings.changed({"upstream_ca_bundle": bundle}))
    clip_id = await make_clip(audio_url=str(https_origin.make_url("/audio/big.mp3")))
    response = await client.get(f"/clips/{clip_id}/stream")
    assert response.status == 200, await response.text()
    assert await response.read() == (audio_dir / "big.mp3").read_bytes()
    # And a seek: Range passes through the TLS connection too.
    response = await client.get(f"/clips/{clip_id}/stream", headers={"Range": "bytes=1000-1999"})
    assert response.status == 206
    assert await response.read() == (audio_dir / "big.mp3").read_bytes()[1000:2000]


async def test_the_bundle_adds_to_the_system_store_and_keeps_checking(
    settings, make_client, make_clip, https_origin, tmp_path
):
    """A bundle of another CA does not make the origin trusted: the bundle
    adds CAs, it does not switch verification off."""
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    client = await make_client(settings.changed({"upstream_ca_bundle": other}))
    clip_id = await make_clip(audio_url=str(https_origin.make_url("/audio/small.mp3")))
    problem = await read_problem(await client.get(f"/clips/{clip_id}/stream"), 502)
    assert "failed TLS" in problem["detail"]


@pytest.mark.parametrize(
    ("content", "reason"),
    [(None, "cannot read"), (b"not a certificate\n", "holds no PEM CA certificate")],
)
def test_an_unusable_bundle_stops_start_up(tmp_path, content, reason):
    path = tmp_path / "bundle.pem"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=reason) as raised:
        Settings(DATABASE_URL="postgresql://clips@127.0.0.1/clips", UPSTREAM_CA_BUNDLE=path)
    assert "UPSTREAM_CA_BUNDLE" in str(raised.value)
