"""Uploaded audio in an S3 bucket (MEDIA_STORE=s3): AWS S3 or an
S3-compatible store (MinIO, Cloudflare R2, Google Cloud Storage's XML API)
named by S3_ENDPOINT_URL.

Requests are signed by botocore's SigV4 signer (`S3SigV4Auth`, and
`S3SigV4QueryAuth` for presigned URLs) and sent through an aiohttp session
the caller passes in: the app's own client (streaming/upstream.py), so the
app has one HTTP client, one set of timeouts, and no second connection pool
library. botocore is used for signing only: no client objects, no service
model loaded, no blocking I/O.

A clip's `media_path` is its object's name: the key is S3_PREFIX + name, so
`python -m streaming.migrate_to_s3` copies MEDIA_DIR's files under the same
names and no row changes. Every failure raises `StorageError` naming the
action and what the store answered (its S3 error code, never a signature or
a key), counted once through `on_error(operation)`; an unreachable
endpoint is `unavailable` (503), the rest are 500s.

An upload is written as it arrives (`NewObject`): in memory up to
PART_BYTES, then as a multipart upload, one part per PART_BYTES; a file
smaller than that is one PUT when it is committed. Whatever ends an upload
without `commit()`, `discard()` aborts its multipart upload, so the bucket
keeps no parts. A process killed mid-upload cannot abort: give the bucket a
lifecycle rule that aborts incomplete multipart uploads after a day
(README, "Past one machine").
"""

import asyncio
import logging
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote
from xml.sax.saxutils import escape

import aiohttp
import aiohttp.payload
import yarl
from aiohttp.abc import AbstractStreamWriter

from storage import StorageError

# botocore is imported where it is used (a Bucket's methods): the import
# costs 0.15-0.6 s of CPU (idle to loaded machine) and 20 MiB per process,
# which every server process, worker and command would pay at start; only
# MEDIA_STORE=s3 should.

log = logging.getLogger(__name__)

# S3's smallest part but the last is 5 MiB: each upload holds at most this
# much in memory (UPLOAD_MAX_CONCURRENT x 5 MiB per process at worst).
PART_BYTES = 5 * 1024 * 1024
# Longest one request to the bucket may take, a 5 MiB part included (about
# 700 kbit/s): a store that hangs must not hold an upload until
# UPLOAD_MAX_SECONDS, nor outlive its partial file's sweep (2 minutes).
REQUEST_SECONDS = 60.0
# Longest a presigned URL may live (SigV4's limit is 7 days).
MAX_PRESIGN_SECONDS = 7 * 24 * 3600
# What a request body is written in: the writer waits for the socket
# between pieces, so a slow store holds back the sender, not more memory.
SEND_BYTES = 256 * 1024
# What an error answer's body may be read up to (S3's are a few hundred bytes).
ERROR_BODY_BYTES = 4096

# S3 error codes, in words a listener and an operator both read.
CODES = {
    "NoSuchKey": "there is no such object",
    "NoSuchBucket": "the bucket does not exist",
    "AccessDenied": "access was denied (check the credentials and the bucket policy)",
    "InvalidAccessKeyId": "the access key is unknown to the store",
    "SignatureDoesNotMatch": "the request signature was refused (check the secret key)",
    "ExpiredToken": "the session token has expired",
    "InvalidBucketName": "the bucket name is invalid",
    "PermanentRedirect": "the bucket is in another region (check S3_REGION)",
    "AuthorizationHeaderMalformed": "the bucket is in another region (check S3_REGION)",
    "SlowDown": "the store asks to slow down",
    "ServiceUnavailable": "the store is unavailable",
    "InternalError": "the store failed internally",
}


@dataclass(frozen=True)
class BucketConfig:
    """Where the bucket is and how to sign for it (settings.py's S3_* and
    AWS_* variables). `endpoint_url` None means AWS S3 itself."""

    bucket: str
    region: str = "us-east-1"
    endpoint_url: str | None = None
    prefix: str = ""
    access_key_id: str = ""
    secret_access_key: str = ""
    session_token: str | None = None

    def __repr__(self) -> str:  # the credentials stay out of logs
        return f"BucketConfig(bucket={self.bucket!r}, endpoint_url={self.endpoint_url!r})"


def error_code(body: bytes) -> str | None:
    """The `<Code>` of an S3 error document, if there is one."""
    found = re.search(rb"<Code>([A-Za-z0-9.]{1,64})</Code>", body)
    return found.group(1).decode() if found else None


def explain(status: int, body: bytes) -> str:
    """What an S3 error answer means, in words."""
    code = error_code(body)
    if code is None:  # a HEAD's answer has no body
        code = {403: "AccessDenied", 404: "NoSuchKey"}.get(status)
    if code is None:
        return f"the store answered {status}"
    return f"{CODES.get(code, 'the store refused it')} ({code})"


class Bucket:
    """One bucket, reached through `session`. `on_error(operation)` is called
    once per failure ("read", "write" or "delete"), for metrics."""

    def __init__(
        self,
        config: BucketConfig,
        session: aiohttp.ClientSession,
        on_error: Callable[[str], None] = lambda op: None,
    ):
        self.config = config
        self.session = session
        self._on_error = on_error
        from botocore.credentials import Credentials

        self._credentials = Credentials(
            config.access_key_id, config.secret_access_key, config.session_token
        )
        if config.endpoint_url:
            # Path style: MinIO, moto and most S3-compatible stores serve
            # it; their bucket names need no DNS of their own.
            self._base = f"{config.endpoint_url.rstrip('/')}/{quote(config.bucket)}/"
        else:
            self._base = f"https://{config.bucket}.s3.{config.region}.amazonaws.com/"

    def key(self, name: str) -> str:
        return f"{self.config.prefix}{name}"

    def identity(self, name: str) -> str:
        """What a cache keys the object on: `s3://bucket/key`."""
        return f"s3://{self.config.bucket}/{self.key(name)}"

    def url(self, name: str = "", query: str = "") -> str:
        """The object's URL (the bucket's, for ""), percent-encoded."""
        path = quote(self.key(name), safe="/-_.~") if name else ""
        return self._base + path + (f"?{query}" if query else "")

    def presign(self, name: str, seconds: float, method: str = "GET") -> str:
        """A URL anyone may `method` the object with for `seconds` (at least
        1, at most 7 days): SigV4 query signing, no request sent."""
        from botocore.auth import S3SigV4QueryAuth
        from botocore.awsrequest import AWSRequest

        expires = max(1, min(MAX_PRESIGN_SECONDS, int(seconds)))
        request = AWSRequest(method=method, url=self.url(name))
        S3SigV4QueryAuth(self._credentials, "s3", self.config.region, expires=expires).add_auth(
            request
        )
        return request.url

    def failure(
        self, operation: str, action: str, reason: str, *, unavailable: bool = False
    ) -> StorageError:
        """A StorageError for `action`, counted as `operation`."""
        self._on_error(operation)
        return StorageError(action, reason, unavailable=unavailable)

    async def request(
        self,
        operation: str,
        action: str,
        method: str,
        name: str = "",
        *,
        query: str = "",
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        ok: tuple[int, ...] = (200,),
    ) -> tuple[int, Mapping[str, str], bytes]:
        """Send one signed request; (status, headers, body) when the status
        is in `ok`, else StorageError (a 404 included unless `ok` has it)."""
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest

        url = self.url(name, query)
        signed = AWSRequest(method=method, url=url, data=body, headers=headers or {})
        S3SigV4Auth(self._credentials, "s3", self.config.region).add_auth(signed)
        try:
            async with (
                asyncio.timeout(REQUEST_SECONDS),
                self.session.request(
                    method,
                    yarl.URL(url, encoded=True),  # as signed: no re-encoding
                    data=Body(body) if body else None,
                    headers=dict(signed.headers.items()),
                    allow_redirects=False,
                ) as response,
            ):
                status, answer = response.status, response.headers.copy()
                content = await response.read() if method != "HEAD" else b""
        except (aiohttp.ClientError, TimeoutError) as error:
            if isinstance(error, TimeoutError):
                reason = f"the endpoint did not answer within {REQUEST_SECONDS:g} s"
            else:
                reason = f"the endpoint could not be reached ({type(error).__name__})"
            raise self.failure(operation, action, reason, unavailable=True) from None
        if status in ok:
            return status, answer, content
        reason = explain(status, content[:ERROR_BODY_BYTES])
        raise self.failure(operation, action, reason, unavailable=status == 503)

    async def check(self) -> None:
        """Raise StorageError unless the bucket exists and answers us."""
        action = f"reach the bucket {self.config.bucket!r}"
        status, _, _ = await self.request("read", action, "HEAD", ok=(200, 404))
        if status == 404:
            raise self.failure("read", action, f"{CODES['NoSuchBucket']} (NoSuchBucket)")

    async def size(self, name: str) -> int | None:
        """The object's size in bytes; None when there is no such object."""
        status, headers, _ = await self.request(
            "read", f"read {name} from the bucket", "HEAD", name, ok=(200, 404)
        )
        return int(headers.get("Content-Length", 0)) if status == 200 else None

    async def delete(self, name: str) -> bool:
        """Remove an object (gone already counts as removed). A failure is
        logged and counted, not raised: the clip it belonged to is gone
        either way. Returns whether the object is gone."""
        try:
            await self.request(
                "delete", f"remove {name} from the bucket", "DELETE", name, ok=(200, 204, 404)
            )
        except StorageError as error:
            log.error("orphaned object in the bucket: %s", error)
            return False
        return True

    async def sizes(self) -> dict[str, int]:
        """Every object under S3_PREFIX: its name and size in bytes
        (ListObjectsV2, page by page)."""
        sizes, token = {}, None
        while True:
            query = f"list-type=2&prefix={quote(self.config.prefix, safe='')}"
            if token:
                query += f"&continuation-token={quote(token, safe='')}"
            _, _, body = await self.request("read", "list the bucket", "GET", query=query)
            for item in re.findall(rb"<Contents>(.*?)</Contents>", body, re.DOTALL):
                key = re.search(rb"<Key>([^<]*)</Key>", item)
                size = re.search(rb"<Size>(\d+)</Size>", item)
                if key and size:
                    name = unescape(key.group(1).decode())[len(self.config.prefix) :]
                    sizes[name] = int(size.group(1))
            found = re.search(rb"<NextContinuationToken>([^<]*)</NextContinuationToken>", body)
            if found is None:
                return sizes
            token = unescape(found.group(1).decode())

    def create(self, name: str | None = None) -> "NewObject":
        """A new object, written as it arrives; `name` None: a fresh name
        is given when the first part is sent or on commit."""
        return NewObject(self, name)


class Body(aiohttp.payload.Payload):
    """A request body sent from the bytes given, SEND_BYTES at a time, as
    slices of a memoryview: no copy is made. (aiohttp's BytesIOPayload
    copies the BytesIO's buffer when it measures it, so a 5 MiB part held
    10 MiB while it was sent; its BytesPayload warns past 1 MiB.) It can be
    sent twice: aiohttp sends an idempotent request again when a kept-alive
    connection turns out closed."""

    def __init__(self, value: bytes):
        super().__init__(value, content_type="application/octet-stream")
        self._size = len(value)

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return self._value.decode(encoding, errors)

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        view = memoryview(self._value)[:content_length]
        for at in range(0, len(view), SEND_BYTES):
            await writer.write(view[at : at + SEND_BYTES])


def unescape(text: str) -> str:
    return (
        text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", '"')
        .replace("&apos;", "'")
        .replace("&amp;", "&")
    )


class NewObject:
    """An object being written. `name_as(extension, content_type)` says
    what it will be called and what it holds, before or as the first part
    goes out; `write()` buffers up to PART_BYTES and sends each full part;
    `commit()` finishes it (one PUT when it never reached a part) and
    returns its name; `discard()` aborts an uncommitted multipart upload.
    `sent` turns true when the request that makes the object (the PUT, or
    the multipart upload's completion) has gone out: from then on the
    object may exist even if `commit()` raised, its answer lost (a dropped
    connection, a timeout, the caller cancelled), so an owner that does not
    keep it deletes it by name. Raises StorageError, counted as "write"."""

    def __init__(self, bucket: Bucket, name: str | None = None):
        self._bucket = bucket
        self.name = name
        self.content_type = "application/octet-stream"
        self.extension = ""
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[str] = []
        self.sent = False
        self.committed = False

    def name_as(self, extension: str, content_type: str) -> None:
        self.extension, self.content_type = extension, content_type

    def _action(self) -> str:
        return f"write the upload to the bucket as {self.name}"

    async def write(self, chunk: bytes) -> None:
        self._buffer += chunk
        if len(self._buffer) >= PART_BYTES:
            # The buffer goes before the part is sent: one copy held, not two.
            data, self._buffer = bytes(self._buffer), bytearray()
            await self._send_part(data)

    async def _start(self) -> None:
        if self.name is None:
            self.name = f"{uuid.uuid4().hex}{self.extension}"
        _, _, body = await self._bucket.request(
            "write",
            self._action(),
            "POST",
            self.name,
            query="uploads",
            headers={"Content-Type": self.content_type},
        )
        found = re.search(rb"<UploadId>([^<]+)</UploadId>", body)
        if found is None:
            raise self._bucket.failure("write", self._action(), "the store sent no upload id")
        self._upload_id = unescape(found.group(1).decode())

    def _upload_query(self) -> str:
        return f"uploadId={quote(self._upload_id or '', safe='')}"

    async def _send_part(self, data: bytes) -> None:
        if self._upload_id is None:
            await self._start()
        number = len(self._parts) + 1
        _, headers, _ = await self._bucket.request(
            "write",
            self._action(),
            "PUT",
            self.name,
            query=f"partNumber={number}&{self._upload_query()}",
            body=data,
        )
        self._parts.append(headers.get("ETag", ""))

    async def commit(self) -> str:
        """Finish the object; returns its name."""
        if self._upload_id is None:
            if self.name is None:
                self.name = f"{uuid.uuid4().hex}{self.extension}"
            # The buffer goes before the object is sent: one copy held, not two.
            data, self._buffer = bytes(self._buffer), bytearray()
            self.sent = True
            await self._bucket.request(
                "write",
                self._action(),
                "PUT",
                self.name,
                body=data,
                headers={"Content-Type": self.content_type},
            )
        else:
            if self._buffer or not self._parts:
                data, self._buffer = bytes(self._buffer), bytearray()
                await self._send_part(data)
            parts = "".join(
                f"<Part><PartNumber>{n}</PartNumber><ETag>{escape(tag)}</ETag></Part>"
                for n, tag in enumerate(self._parts, start=1)
            )
            document = f"<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>".encode()
            self.sent = True
            _, _, body = await self._bucket.request(
                "write",
                self._action(),
                "POST",
                self.name,
                query=self._upload_query(),
                body=document,
            )
            # S3 may answer 200 and then report a failure in the body.
            if b"<Error>" in body:
                reason = explain(200, body)
                raise self._bucket.failure("write", self._action(), reason)
        self._buffer = bytearray()
        self.committed = True
        return self.name  # type: ignore[return-value]

    async def discard(self) -> None:
        """Abort the multipart upload unless committed; failures are logged
        (the bucket's lifecycle rule removes what is left)."""
        self._buffer = bytearray()
        if self.committed or self._upload_id is None:
            return
        upload_id, self._upload_id = self._upload_id, None
        try:
            await self._bucket.request(
                "write",
                f"abort the upload of {self.name}",
                "DELETE",
                self.name,
                query=f"uploadId={quote(upload_id, safe='')}",
                ok=(200, 204, 404),
            )
        except StorageError as error:
            log.error("incomplete multipart upload left in the bucket: %s", error)


async def copy_file(bucket: Bucket, path: Path, content_type: str) -> int:
    """Copy the local file `path` to the object of its name, PART_BYTES at
    a time (read on a worker thread), as one PUT or a multipart upload
    aborted if the copy does not finish; returns its size. Raises
    StorageError (an unreadable file, counted as "read", included)."""
    new = bucket.create(path.name)
    new.name_as(path.suffix, content_type)
    size = 0
    try:
        try:
            file = await asyncio.to_thread(path.open, "rb")
        except OSError as error:
            raise bucket.failure("read", f"read {path}", error.strerror or str(error)) from None
        with file:
            while chunk := await asyncio.to_thread(file.read, PART_BYTES):
                size += len(chunk)
                await new.write(chunk)
        await new.commit()
    finally:
        await new.discard()
    return size
