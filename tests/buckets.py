"""A local S3-compatible server for the suite, and buckets in it.

moto's server mode (PyPI `moto[server]`, `moto_server -H 127.0.0.1 -p N`)
answers the S3 API on loopback, offline, with any credentials: the suite
never needs the internet or a cloud account. Tests read and seed buckets
with boto3 (moto's own dependency), a client independent of the app's.
moto does not check request signatures unless told to: what that means for
what the suite proves is in the README ("Past one machine").
"""

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
from botocore.config import Config

from tests.support import free_port

# Any credentials do for moto; these are the ones the app is given.
ACCESS_KEY = "AKIATESTCLIPS0000000"
SECRET_KEY = "test-secret-key-for-the-local-s3-server"
REGION = "us-east-1"
PREFIX = "clips/"


@contextlib.contextmanager
def start_s3_server(directory: Path, checks_signatures: bool = False) -> Iterator[str]:
    """moto_server on a free loopback port until the block ends; its URL,
    once it accepts connections (at most 30 s). `checks_signatures`: after
    its first 3 requests (to make a user and its key, see `signing_user`),
    it checks every request's SigV4 signature against IAM's keys."""
    port = free_port()
    log = directory / "moto.log"
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"} if checks_signatures else None
    with log.open("wb") as out:
        process = subprocess.Popen(
            [Path(sys.executable).parent / "moto_server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log.read_text()
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            assert time.monotonic() < deadline, f"moto_server did not start:\n{log.read_text()}"
            time.sleep(0.05)  # polling a process that offers no readiness event
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


class TestBucket:
    """One bucket of the local server, made on creation. Blocking calls
    (boto3): each is one request to a server in another process."""

    __test__ = False  # not a test class

    def __init__(
        self,
        endpoint: str,
        name: str,
        prefix: str = PREFIX,
        credentials: tuple[str, str] = (ACCESS_KEY, SECRET_KEY),
    ):
        self.endpoint, self.name, self.prefix = endpoint, name, prefix
        self.credentials = credentials
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name=REGION,
            aws_access_key_id=credentials[0],
            aws_secret_access_key=credentials[1],
            config=Config(s3={"addressing_style": "path"}),
        )
        self.client.create_bucket(Bucket=name)
        self.removed = False

    def settings(self) -> dict[str, str]:
        """The app's settings for this bucket."""
        return {
            "MEDIA_STORE": "s3",
            "S3_BUCKET": self.name,
            "S3_ENDPOINT_URL": self.endpoint,
            "S3_REGION": REGION,
            "S3_PREFIX": self.prefix,
            "AWS_ACCESS_KEY_ID": self.credentials[0],
            "AWS_SECRET_ACCESS_KEY": self.credentials[1],
        }

    def put(self, name: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.name, Key=self.prefix + name, Body=data)

    def get(self, name: str) -> bytes:
        return self.client.get_object(Bucket=self.name, Key=self.prefix + name)["Body"].read()

    def names(self) -> set[str]:
        """The objects' names (keys less the prefix)."""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name)
        keys = {item["Key"] for page in pages for item in page.get("Contents", [])}
        return {key.removeprefix(self.prefix) for key in keys}

    def uploads(self) -> set[str]:
        """Multipart uploads begun and neither completed nor aborted, as
        `upload:<name>` (their parts are in the bucket, out of its listing)."""
        listed = self.client.list_multipart_uploads(Bucket=self.name).get("Uploads", [])
        return {f"upload:{item['Key'].removeprefix(self.prefix)}" for item in listed}

    def remove(self) -> None:
        """Empty the bucket and delete it (once: later calls do nothing)."""
        if self.removed:
            return
        self.removed = True
        for upload in self.client.list_multipart_uploads(Bucket=self.name).get("Uploads", []):
            self.client.abort_multipart_upload(
                Bucket=self.name, Key=upload["Key"], UploadId=upload["UploadId"]
            )
        for name in self.names():
            self.client.delete_object(Bucket=self.name, Key=self.prefix + name)
        self.client.delete_bucket(Bucket=self.name)


def signing_user(endpoint: str) -> tuple[str, str]:
    """On a server that checks signatures: a user allowed everything, and
    its (access key id, secret), made with the 3 unchecked requests."""
    iam = boto3.client(
        "iam",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )
    iam.create_user(UserName="clips")
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
    }
    iam.put_user_policy(UserName="clips", PolicyName="all", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="clips")["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]
