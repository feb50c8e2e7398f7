"""`python -m streaming.migrate_to_s3` moves MEDIA_DIR's uploads into the
bucket: the real command, against the local S3 server, then the app on
MEDIA_STORE=s3 streaming what it copied."""

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

from storage import PARTIAL
from storage.s3 import PART_BYTES
from tests.buckets import TestBucket
from tests.support import free_port

ROOT = Path(__file__).resolve().parent.parent


def run(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "streaming.migrate_to_s3"],
        cwd=ROOT,
        env={**os.environ, "PYTHON_DOTENV_DISABLED": "1", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_it_copies_what_is_missing_skips_what_is_there_and_the_app_streams_it(
    s3_server, media_dir, settings, make_client, make_clip
):
    bucket = TestBucket(s3_server, f"m-{uuid.uuid4().hex[:12]}", prefix="migrated/")
    (media_dir / "long.wav").write_bytes(os.urandom(PART_BYTES + 1000))  # a multipart copy
    (media_dir / f"{PARTIAL}{uuid.uuid4().hex}").write_bytes(b"an upload in progress")
    bucket.put("small.mp3", (media_dir / "small.mp3").read_bytes())  # a run that stopped
    bucket.put("tune.wav", b"a different, shorter file")  # stale: copied again
    env = {**bucket.settings(), "MEDIA_STORE": "local", "MEDIA_DIR": str(media_dir)}

    first = await asyncio.to_thread(run, env)

    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert lines[:4] == [
        f"[1/4] copied big.mp3 ({3 * 1024 * 1024 + 17} bytes)",
        f"[2/4] copied long.wav ({PART_BYTES + 1000} bytes)",
        "[3/4] skipped small.mp3 (10000 bytes, already in the bucket)",
        f"[4/4] copied tune.wav ({(media_dir / 'tune.wav').stat().st_size} bytes)",
    ]
    assert lines[4] == (
        f"migrate_to_s3: 3 copied, 1 already in s3://{bucket.name}/migrated/, 0 failed"
    )
    assert bucket.names() == {"big.mp3", "long.wav", "small.mp3", "tune.wav"}
    for name in bucket.names():
        assert bucket.get(name) == (media_dir / name).read_bytes()
    assert bucket.uploads() == set()

    again = await asyncio.to_thread(run, env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[-1].startswith("migrate_to_s3: 0 copied, 4 already in")

    # The clips' rows need no change: media_path is the object's name.
    s3 = {
        "media_store": "s3",
        "s3_bucket": bucket.name,
        "s3_endpoint_url": s3_server,
        "s3_prefix": "migrated/",
        "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
        "media_dir": str(media_dir.parent / "empty"),  # nothing served from disk
    }
    (media_dir.parent / "empty").mkdir()
    client = await make_client(settings.changed(s3))
    clip_id = await make_clip(media_path="long.wav", content_type="audio/wav")
    response = await client.get(f"/clips/{clip_id}/stream")
    assert await response.read() == (media_dir / "long.wav").read_bytes()
    bucket.remove()


def test_an_unreachable_bucket_stops_it_in_one_line(media_dir):
    env = {
        "MEDIA_DIR": str(media_dir),
        "S3_BUCKET": "anything",
        "S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "not-a-real-secret",
    }
    result = run(env)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "migrate_to_s3: cannot list the bucket: the endpoint could not be reached"
        " (ClientConnectorError)"
    )


def test_it_names_the_settings_it_needs(media_dir):
    result = run({"MEDIA_DIR": str(media_dir), "S3_BUCKET": ""})
    assert result.returncode == 1
    assert "MEDIA_STORE=s3 needs S3_BUCKET" in result.stderr
