"""What only a bucket does (MEDIA_STORE=s3, against the local S3 server):
uploads past one part go up as multipart uploads and are aborted when they
fail, the bucket's endpoint is trusted without opening the address guard to
clip URLs, redirect mode hands out presigned URLs, and a bucket that is
missing or unreachable is a clear problem, counted. The behaviour shared
with MEDIA_DIR is tested on both stores in test_uploads.py,
test_partial_uploads.py, test_streams.py and test_clips.py."""

import asyncio
import io
import tracemalloc
import wave

import aiohttp
import pytest
import yarl
from aiohttp import web
from aiohttp.test_utils import TestServer

from db import POOL
from db.plays import PLAYS
from server import SERVER_OPTIONS, create_app
from settings import Settings
from storage import StorageError
from storage.s3 import PART_BYTES, Bucket, BucketConfig
from tests.buckets import TestBucket, signing_user, start_s3_server
from tests.replicas import replicas
from tests.scrape import metric, scrape
from tests.support import (
    MP3,
    clip_count,
    free_port,
    raw_upload_head,
    read_problem,
    upload_form,
    wait_until,
)

pytestmark = pytest.mark.parametrize("media_store", ["s3"], indirect=True)


def long_wav(size: int) -> bytes:
    """A real WAV of about `size` bytes (8 kHz mono 16-bit: 16,000 bytes a second)."""
    out = io.BytesIO()
    with wave.open(out, "wb") as audio:
        audio.setnchannels(1)
        audio.setsampwidth(2)
        audio.setframerate(8000)
        audio.writeframes(bytes(range(256)) * (size // 256))
    return out.getvalue()


# Two full parts and a short last one.
BIG = long_wav(2 * PART_BYTES + 300_000)


async def test_a_large_upload_goes_up_in_parts_and_streams_whole_and_by_range(client, bucket):
    before = bucket.names()
    response = await client.post("/clips", data=upload_form(io.BytesIO(BIG), "long.wav"))
    assert response.status == 201, await response.text()
    clip = await response.json()
    assert clip["size_bytes"] == len(BIG)
    (name,) = bucket.names() - before
    assert name.endswith(".wav")
    assert bucket.get(name) == BIG
    assert bucket.uploads() == set()  # completed, not left open
    stream = await client.get(f"/clips/{clip['id']}/stream")
    assert await stream.read() == BIG
    first = PART_BYTES - 50  # across the first part's end
    part = await client.get(
        f"/clips/{clip['id']}/stream", headers={"Range": f"bytes={first}-{first + 99}"}
    )
    assert part.status == 206
    assert await part.read() == BIG[first : first + 100]


async def test_an_upload_over_the_cap_after_its_first_part_is_aborted(
    settings, make_client, bucket
):
    client = await make_client(settings.changed({"max_upload_bytes": PART_BYTES + 100_000}))
    before = bucket.names()
    response = await client.post("/clips", data=upload_form(io.BytesIO(BIG), "long.wav"))
    await read_problem(response, 413)
    assert (bucket.names(), bucket.uploads()) == (before, set())
    assert await clip_count(client.server.app[POOL]) == 0


async def test_a_client_gone_after_the_first_part_leaves_no_upload(client, bucket):
    before = bucket.names()
    _, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(raw_upload_head(len(BIG)) + BIG[: PART_BYTES + 200_000])
    await writer.drain()
    await wait_until(bucket.uploads, "the multipart upload begun", seconds=30)
    writer.close()
    await wait_until(lambda: not bucket.uploads(), "the multipart upload aborted", seconds=30)
    assert bucket.names() == before
    assert await clip_count(client.server.app[POOL]) == 0


async def test_a_database_failure_after_the_upload_removes_its_object(client, pool, bucket):
    """The object is complete when the row is written: if that fails, the
    object goes (a 500, nothing kept)."""
    before = bucket.names()
    await pool.execute("ALTER TABLE clips ADD CONSTRAINT refuse CHECK (false) NOT VALID")
    response = await client.post("/clips", data=upload_form(io.BytesIO(BIG), "long.wav"))
    await read_problem(response, 500)
    assert (bucket.names(), bucket.uploads()) == (before, set())


async def test_the_bucket_is_trusted_but_clip_urls_naming_it_are_not(
    settings, make_client, make_clip, bucket
):
    """The bucket's endpoint (here on loopback, as MinIO on a private
    network would be) bypasses the address guard; a remote clip whose URL
    names the same endpoint is still refused, even after a bucket stream."""
    client = await make_client(settings.changed({"upstream_allow": ()}))
    stored = await make_clip(media_path="small.mp3")
    response = await client.get(f"/clips/{stored}/stream")
    assert response.status == 200
    assert await response.read() == bucket.get("small.mp3")
    remote = await make_clip(audio_url=f"{bucket.endpoint}/{bucket.name}/clips/small.mp3")
    refused = await client.get(f"/clips/{remote}/stream")
    assert "not a public address" in (await read_problem(refused, 502))["detail"]


async def test_redirect_mode_sends_the_player_to_a_presigned_url(
    settings, make_client, make_clip, bucket
):
    client = await make_client(settings.changed({"stream_mode": "redirect"}))
    clip_id = await make_clip(media_path="big.mp3")
    response = await client.get(f"/clips/{clip_id}/stream", allow_redirects=False)
    assert response.status == 302
    assert response.headers["Cache-Control"] == "no-store"
    location = response.headers["Location"]
    assert location.startswith(f"{bucket.endpoint}/{bucket.name}/clips/big.mp3?")
    assert "X-Amz-Signature=" in location and "X-Amz-Expires=" in location
    async with aiohttp.ClientSession() as player, player.get(location) as followed:
        assert await followed.read() == bucket.get("big.mp3")  # no key needed
    await client.server.app[PLAYS].flush()
    assert (await (await client.get(f"/clips/{clip_id}")).json())["play_count"] == 1
    probe = await client.get(f"/clips/{clip_id}/stream", headers={"Range": "bytes=0-1"})
    assert probe.status == 206  # answered here (Safari's probe), not redirected
    assert await probe.read() == bucket.get("big.mp3")[:2]


async def test_a_missing_bucket_is_a_clear_problem_and_counted(client, make_clip, bucket):
    clip_id = await make_clip(media_path="small.mp3")
    bucket.remove()  # deleted under the running app
    upload = await client.post("/clips", data=upload_form(io.BytesIO(BIG), "long.wav"))
    assert "the bucket does not exist" in (await read_problem(upload, 500))["detail"]
    stream = await client.get(f"/clips/{clip_id}/stream")
    assert "the bucket does not exist" in (await read_problem(stream, 500))["detail"]
    text = await scrape(client)
    assert metric(text, "clips_storage_errors_total", operation="write") >= 1
    assert metric(text, "clips_storage_errors_total", operation="read") == 1
    assert await clip_count(client.server.app[POOL]) == 1


async def test_an_unreachable_endpoint_is_503_and_readyz_stays_ready(
    settings, make_client, make_clip
):
    """/readyz does not ask the bucket: an outage of the store every replica
    shares would take them all out of service, remote clips and the
    catalogue included, for what only uploads and their streams need."""
    down = f"http://127.0.0.1:{free_port()}"
    client = await make_client(settings.changed({"s3_endpoint_url": down}))
    clip_id = await make_clip(media_path="small.mp3")
    upload = await client.post("/clips", data=upload_form(io.BytesIO(BIG), "long.wav"))
    assert "could not be reached" in (await read_problem(upload, 503))["detail"]
    assert upload.headers["Retry-After"].isdigit()
    stream = await client.get(f"/clips/{clip_id}/stream")
    assert "connection refused" in (await read_problem(stream, 503))["detail"]
    assert (await client.get("/readyz")).status == 200
    text = await scrape(client)
    assert metric(text, "clips_storage_errors_total", operation="read") >= 1


async def refused_start(settings: Settings) -> StorageError:
    """The StorageError an app's start stops at; what did start is closed."""
    server = TestServer(create_app(settings))
    try:
        with pytest.raises(StorageError) as refused:
            await server.start_server(**SERVER_OPTIONS)
    finally:
        if server.runner is not None:
            await server.runner.cleanup()
    return refused.value


async def test_the_app_does_not_start_on_a_bucket_that_does_not_exist(settings):
    refused = await refused_start(settings.changed({"s3_bucket": "no-such-bucket"}))
    assert "the bucket does not exist" in str(refused)


@pytest.fixture
def signing_bucket(tmp_path):
    """A bucket on a local S3 server that checks every request's signature
    (the shared one does not): proof that the app's requests, as they
    arrive (path, query, headers as aiohttp sent them), are signed right."""
    with start_s3_server(tmp_path, checks_signatures=True) as endpoint:
        made = TestBucket(endpoint, "signed", credentials=signing_user(endpoint))
        yield made
        made.remove()


async def test_requests_are_signed_as_a_checking_store_expects(
    settings, make_client, signing_bucket
):
    """Uploads (one PUT, and a multipart upload) and deletes pass a server
    that verifies SigV4 signatures; a wrong secret is refused at start.
    (Presigned URLs, which streams use, are not checked by this server.)"""
    bucket = signing_bucket
    names = {
        "s3_bucket": bucket.name,
        "s3_endpoint_url": bucket.endpoint,
        "aws_access_key_id": bucket.credentials[0],
        "aws_secret_access_key": bucket.credentials[1],
    }
    client = await make_client(settings.changed(names))
    small = await client.post("/clips", data=upload_form(MP3))
    big = await client.post("/clips", data=upload_form(io.BytesIO(BIG), "long.wav"))
    assert (small.status, big.status) == (201, 201), await big.text()
    assert len(bucket.names()) == 2 and bucket.uploads() == set()
    for response in (small, big):
        assert (await client.delete(f"/clips/{(await response.json())['id']}")).status == 204
    assert bucket.names() == set()
    wrong = settings.changed({**names, "aws_secret_access_key": "not-the-secret"})
    assert "access was denied" in str(await refused_start(wrong))


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_malformed_conditions_are_ignored_not_sent_to_the_bucket(
    client, make_clip, bucket, method
):
    """RFC 9110 §13.1.3: an If-Modified-Since that is not a date is
    ignored. Sent on as it came, a store may refuse the request (moto
    answers 500), which the listener would read as the store failing."""
    clip_id = await make_clip(media_path="small.mp3")
    for condition in ({"If-Modified-Since": "garbage"}, {"If-None-Match": "not-a-tag"}):
        response = await client.request(method, f"/clips/{clip_id}/stream", headers=condition)
        assert response.status == 200, (condition, await response.text())
        if method == "GET":
            assert await response.read() == bucket.get("small.mp3")
    text = await scrape(client)
    assert metric(text, "clips_storage_errors_total", operation="read") == 0


class Front:
    """A loopback front for the bucket's endpoint: every request is passed
    on and answered with the store's answer. Every PUT (an object or a
    part) is noted in `held` with the memory Python holds as it arrives
    (tracemalloc's, when tracing). A commit (the one PUT of a whole object,
    or the POST completing a multipart upload) is noted in `commits`; with
    `drop`, it is done by the store, then the
    connection is dropped unanswered, as a load balancer's timeout or a
    network cut after the store acted would."""

    def __init__(self, endpoint: str, drop: bool = False):
        self.endpoint, self.drop = endpoint, drop
        self.commits: list[str] = []
        self.held: list[int] = []
        self.session = aiohttp.ClientSession(auto_decompress=False)
        self.app = web.Application(client_max_size=2 * PART_BYTES)
        self.app.router.add_route("*", "/{tail:.*}", self.forward)

    async def forward(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        commit = (request.method == "PUT" and not query) or (
            request.method == "POST" and "uploadId" in query
        )
        if request.method == "PUT":  # before its body is read here
            self.held.append(tracemalloc.get_traced_memory()[0])
        if commit:
            self.commits.append(request.method)
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in ("host", "content-length", "transfer-encoding")
        }
        async with self.session.request(
            request.method,
            yarl.URL(self.endpoint + request.raw_path, encoded=True),
            headers=headers,
            data=io.BytesIO(await request.read()),
        ) as answer:
            body = await answer.read()
        if commit and self.drop and answer.status == 200:
            assert request.transport is not None
            request.transport.close()  # done by the store; its answer lost
        return web.Response(status=answer.status, body=body, headers=answer.headers)


@pytest.fixture
async def front(aiohttp_server, bucket):
    """The Front of the test's bucket, and its URL."""
    made = Front(bucket.endpoint)
    server = await aiohttp_server(made.app)
    yield made, str(server.make_url("")).rstrip("/")
    await made.session.close()


@pytest.mark.parametrize("size", ["one PUT", "multipart"])
async def test_an_object_whose_commit_answer_is_lost_is_removed(
    settings, make_client, bucket, front, size
):
    """The store made the object, the app never heard so: no row names it,
    so it goes (no lifecycle rule removes a complete object)."""
    front, endpoint = front
    front.drop = True
    client = await make_client(settings.changed({"s3_endpoint_url": endpoint}))
    before = bucket.names()
    audio, filename = (MP3, "song.mp3") if size == "one PUT" else (BIG, "long.wav")
    response = await client.post("/clips", data=upload_form(io.BytesIO(audio), filename))
    assert "the endpoint could not be reached" in (await read_problem(response, 503))["detail"]
    # (aiohttp's client sends an idempotent PUT again once when its
    # keep-alive connection drops: both are dropped.)
    assert set(front.commits) == {"PUT" if size == "one PUT" else "POST"}
    assert (bucket.names(), bucket.uploads()) == (before, set())
    assert await clip_count(client.server.app[POOL]) == 0


@pytest.mark.parametrize("size", ["one PUT", "multipart"])
async def test_an_upload_holds_one_copy_of_a_part_while_it_is_sent(bucket, front, size):
    """README: each upload holds at most 5 MiB of memory. Each part (or the
    whole object, below a part) is sent from one copy: the buffer it was
    gathered in is let go before the request goes out, and the request
    body is not copied again."""
    front, endpoint = front
    audio = long_wav(PART_BYTES - 100_000) if size == "one PUT" else BIG
    config = BucketConfig(bucket.name, endpoint_url=endpoint, prefix=bucket.prefix)
    async with aiohttp.ClientSession() as session:
        new = Bucket(config, session).create()
        new.name_as(".wav", "audio/wav")
        tracemalloc.start()
        try:
            for at in range(0, len(audio), 64 * 1024):
                await new.write(audio[at : at + 64 * 1024])
            name = await new.commit()
        finally:
            tracemalloc.stop()
    assert bucket.get(name) == audio
    assert len(front.held) == (1 if size == "one PUT" else 3)
    held = max(front.held)
    assert held < 1.5 * PART_BYTES, f"{held / 2**20:.1f} MiB held while a part was sent"


async def test_a_file_that_is_not_audio_is_refused_before_it_reaches_the_bucket(
    settings, make_client, bucket, front
):
    """Its first bytes tell: none of its 12 MiB goes up (two parts, else)."""
    front, endpoint = front
    client = await make_client(settings.changed({"s3_endpoint_url": endpoint}))
    noise = bytes(range(7, 256)) * (12 * 2**20 // 249)
    response = await client.post("/clips", data=upload_form(io.BytesIO(noise), "noise.mp3"))
    assert "not audio" in (await read_problem(response, 415))["detail"]
    assert (front.held, bucket.uploads()) == ([], set())
    assert await clip_count(client.server.app[POOL]) == 0


async def test_debug_logs_hold_no_signature_nor_session_token(
    database_url, make_clip, bucket, tmp_path_factory
):
    """README: the credentials never appear in logs. With LOG_LEVEL=DEBUG,
    botocore's signer logs each canonical request (a session token in it)
    and its signature, from which a presigned URL could be rebuilt."""
    token = "session-token-that-must-stay-out-of-logs"
    clip_id = await make_clip(media_path="small.mp3")
    env = {**bucket.settings(), "LOG_LEVEL": "DEBUG", "AWS_SESSION_TOKEN": token}
    async with (
        # A short directory: the upload readers' forkserver socket lives in it.
        replicas(database_url, tmp_path_factory.mktemp("log"), count=1, **env) as (server,),
        aiohttp.ClientSession() as session,
    ):
        form = upload_form(io.BytesIO(MP3))
        async with session.post(server.url("/clips"), data=form) as response:
            assert response.status == 201, await response.text()
        async with session.get(server.url(f"/clips/{clip_id}/stream")) as response:
            assert await response.read() == bucket.get("small.mp3")
    output = server.output()
    assert " DEBUG " in output  # the level is on
    assert token not in output
    assert "Signature" not in output
