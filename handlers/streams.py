"""GET/HEAD /clips/{id}/stream: the clip's audio, seekable, counted once per play.

The route only finds the clip and picks the sender: stored clips go out
from the media store with sendfile (streaming/stored.py) or, with
MEDIA_STORE=s3, from the bucket (streaming/bucket.py), remote clips are
piped from their origin or redirected to it (streaming/proxy.py). A stored
clip plays its preview once ready, its original with `?variant=original`
(streaming/stored.py stored_variant). What the
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

# `?variant=`: the preview once it is ready (the default; the original until
# then), or the original. Remote clips have only their original.
VARIANTS = ("preview", "original")


@routes.get(STREAM_ROUTE)
async def stream_clip(request: web.Request) -> web.StreamResponse:
    clip_id = parse_id(request.match_info["clip_id"])
    clip = await request.app[CLIP_CACHE].get(clip_id)
    if clip is None:
        raise Problem(404, f"No clip has id {clip_id}")
    request[STREAM_CLIP] = clip_id
    request[STREAM_RANGE] = requested_range(request)
    variant = request.query.get("variant", "preview")
    if variant not in VARIANTS:
        raise Problem(
            400,
            f"variant must be one of {', '.join(VARIANTS)}, not {variant[:40]!r}",
            errors=[{"field": "variant", "reason": f"one of {', '.join(VARIANTS)}"}],
        )
    if variant == "preview" and clip["preview_status"] == "pending":
        # A kept row may predate the preview becoming ready (made by another
        # process): the plain URL is handed out only once it is, and must
        # then never play the original (handlers/clips.py url_variant).
        clip = await request.app[CLIP_CACHE].get(clip_id, fresh=True)
        if clip is None:
            raise Problem(404, f"No clip has id {clip_id}")
    if clip["media_path"] is not None and BUCKET in request.app:
        return await send_bucket(request, request.app[BUCKET], clip, variant)
    if clip["media_path"] is not None:
        return await send_stored(request, request.app[MEDIA_STORE], clip, variant)
    if request.app[SETTINGS].stream_mode == "redirect":
        return await redirect_remote(request, clip)
    return await send_remote(request, clip)
