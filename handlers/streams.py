"""GET/HEAD /clips/{id}/stream: the clip's audio, seekable, counted once per play.

The route only finds the clip and picks the sender: stored clips go out
from the media store with sendfile (streaming/stored.py) or, with
MEDIA_STORE=s3, from the bucket (streaming/bucket.py), remote clips are
piped from their origin or redirected to it (streaming/proxy.py). What the
request asks for is read once (streaming/ranges.py); the play rule lives in
streaming/plays.py.
"""

from aiohttp import web

from db.clip_cache import CLIP_CACHE
from settings import SETTINGS
from storage import MEDIA_STORE
from streaming.bucket import BUCKET, send_bucket
from streaming.plays import STREAM_CLIP, STREAM_RANGE
from streaming.proxy import redirect_remote, send_remote
from streaming.ranges import requested_range
from streaming.stored import send_stored
from web.auth import STREAM_ROUTE
from web.params import parse_id
from web.problems import Problem

routes = web.RouteTableDef()


@routes.get(STREAM_ROUTE)
async def stream_clip(request: web.Request) -> web.StreamResponse:
    clip_id = parse_id(request.match_info["clip_id"])
    clip = await request.app[CLIP_CACHE].get(clip_id)
    if clip is None:
        raise Problem(404, f"No clip has id {clip_id}")
    request[STREAM_CLIP] = clip_id
    request[STREAM_RANGE] = requested_range(request)
    if clip["media_path"] is not None and BUCKET in request.app:
        return await send_bucket(request, request.app[BUCKET], clip)
    if clip["media_path"] is not None:
        return await send_stored(request, request.app[MEDIA_STORE], clip)
    if request.app[SETTINGS].stream_mode == "redirect":
        return await redirect_remote(request, clip)
    return await send_remote(request, clip)
