"""Stored clips in a bucket (MEDIA_STORE=s3): the app's `Bucket`, and their
streams.

A clip in the bucket streams as a remote clip whose origin is the bucket
(streaming/proxy.py): a presigned GET of its object, sent through the app's
client for trusted origins, so Range, conditional requests, the play rule
and the metrics are the remote path's, and a read-through cache of remote
clips in that path keys it on `Origin.identity`, `s3://bucket/key` (the
presigned URL changes on every request). It is counted as a "stored"
stream: it is an upload, wherever its bytes live.

In STREAM_MODE=redirect the player is sent to a presigned URL, which lives
as long as the clip's longest stream may (streaming/plays.py's
`longest_life`): players send their later range requests to where they
were redirected, and a URL that expired mid-listen would stop a seek.
"""

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from db.clips import Row
from metrics.registry import METRICS
from settings import SETTINGS, Settings
from storage import StorageError
from storage.s3 import Bucket, BucketConfig
from streaming.plays import STREAM_SOURCE, longest_life
from streaming.proxy import Origin, redirect_remote, send_remote
from streaming.stored import stored_variant
from streaming.upstream import UPSTREAM

log = logging.getLogger(__name__)

BUCKET = web.AppKey("BUCKET", Bucket)
# Seconds a presigned URL the app fetches itself lives: it is used at once.
FETCH_URL_SECONDS = 60


def bucket_config(settings: Settings) -> BucketConfig:
    return BucketConfig(
        bucket=settings.s3_bucket or "",
        region=settings.s3_region,
        endpoint_url=settings.s3_endpoint_url,
        prefix=settings.s3_prefix,
        access_key_id=settings.aws_access_key_id or "",
        secret_access_key=settings.aws_secret_access_key or "",
        session_token=settings.aws_session_token,
    )


async def bucket_ctx(app: web.Application) -> AsyncIterator[None]:
    """With MEDIA_STORE=s3, the app's bucket (after upstream_ctx: it sends
    through the app's client). Checked once at start: a bucket that does not
    exist or refuses our credentials stops the start (StorageError), as a
    wrong setting does; an endpoint that cannot be reached right now is a
    warning, since it may come back, and until then uploads and their
    streams are 503s."""
    settings = app[SETTINGS]
    if settings.media_store != "s3":
        yield
        return
    bucket = Bucket(
        bucket_config(settings),
        app[UPSTREAM].trusted_session,
        on_error=lambda op: app[METRICS].storage_errors.labels(op).inc(),
    )
    try:
        await bucket.check()
    except StorageError as error:
        if not error.unavailable:
            raise
        log.warning("the media bucket is unreachable for now: %s", error)
    app[BUCKET] = bucket
    yield


async def send_bucket(
    request: web.Request, bucket: Bucket, clip: Row, variant: str = "original"
) -> web.StreamResponse:
    """The clip's object (`variant`: streaming/stored.py stored_variant) as
    the answer to `request` (or, in redirect mode, a 302 to a presigned URL
    of it)."""
    request[STREAM_SOURCE] = "stored"
    name, _ = stored_variant(clip, variant)
    settings = request.app[SETTINGS]
    # SigV4 signs the method: a URL presigned for GET is refused for HEAD.
    if settings.stream_mode == "redirect":
        url = bucket.presign(name, longest_life(settings, clip), request.method)
        return await redirect_remote(request, clip, Origin(url, bucket.identity(name), True))
    url = bucket.presign(name, FETCH_URL_SECONDS, request.method)
    return await send_remote(request, clip, Origin(url, bucket.identity(name), trusted=True))
