"""The clip catalogue: list, show, stats, create (remote URL or upload), edit, delete.

Thin routes: parse (web/params.py, schemas/clips.py), ask the data layer
(db/clips.py), render (`Renderer`, from schemas.clips.COLUMNS).
"""

import mimetypes

import yarl
from aiohttp import web

from db import POOL, clips
from db import jobs as queue
from db.clip_cache import CLIP_CACHE
from db.clips import Row
from jobs import JOBS
from schemas.clips import (
    COLUMNS,
    Clip,
    ClipChanges,
    ClipStats,
    ListQuery,
    NewClip,
    Preview,
    UploadForm,
)
from settings import SETTINGS
from storage import MEDIA_STORE
from streaming.bucket import BUCKET
from streaming.cache import CACHE
from streaming.uploads import UPLOADS
from streaming.upstream import UPSTREAM, UpstreamRefused
from web.auth import ACCESS, STREAM_ROUTE
from web.conditions import entity_tags
from web.pages import PAGE_CACHE, Page
from web.pagination import decode_cursor, encode_cursor, next_link
from web.params import parse_id, parse_json, parse_query, validate
from web.problems import Problem
from web.requestlog import CLIP_ID
from web.responses import encode_json, encoded_json_response, json_response

routes = web.RouteTableDef()


def base_url(request: web.Request) -> str:
    configured = request.app[SETTINGS].public_url
    return configured.rstrip("/") if configured else f"{request.scheme}://{request.host}"


class Renderer:
    """Clip rows as response bodies, for one request: the base URL and the
    signer are looked up once, not once per clip of a page."""

    def __init__(self, request: web.Request):
        self.base = base_url(request)
        self.signer = request.app[ACCESS].signer

    def stream_url(self, clip_id: int, variant: str | None = None) -> str:
        """The clip's stream URL, naming `variant` when given, signed when
        stream URLs are (web/auth.py; the signature covers the clip and the
        expiry, so either variant plays with it)."""
        url = self.base + STREAM_ROUTE.replace("{clip_id}", str(clip_id))
        query = [f"variant={variant}"] if variant is not None else []
        if self.signer:
            signed = self.signer.sign(clip_id)
            query += [f"exp={signed['exp']}", f"sig={signed['sig']}"]  # URL-safe already
        return f"{url}?{'&'.join(query)}" if query else url

    def clip(self, row: Row) -> Clip:
        body = {name: row[name] for name in COLUMNS}
        body["stream_url"] = self.stream_url(row["id"], url_variant(row))
        body["preview"] = preview(row)
        body["peaks_url"] = f"{self.base}/clips/{row['id']}/peaks"
        return body  # type: ignore[return-value]


def url_variant(row: Row) -> str | None:
    """The variant a clip's stream_url names: "original" while its preview
    is pending (or failed), else none (the plain URL: the preview once
    ready). So a URL a player holds means the same bytes for as long as it
    plays: a plain URL that served the original until the preview became
    ready would send a player seeking after the switch the preview's bytes
    at the original's offset (Chromium sends `Range` without `If-Range`)."""
    return "original" if row["preview_status"] in ("pending", "failed") else None


def preview(row: Row) -> Preview | None:
    """The clip's preview as the API shows it (None: it has none)."""
    if row["preview_status"] is None:
        return None
    return {
        "status": row["preview_status"],
        "content_type": row["preview_content_type"],
        "size_bytes": row["preview_size_bytes"],
        "bitrate": row["preview_bitrate"],
        "reason": row["preview_error"],
    }


def etag(clip: Row) -> str:
    """The version of a clip's metadata (not of its play count)."""
    return f'"{clip["id"]}-{clip["updated_at"].timestamp():.6f}"'


def check_version(request: web.Request, clip: Row) -> None:
    """If-Match: change the clip only if nobody changed it since: any listed
    entity tag matching strongly, or `*` (RFC 9110 §13.1.1; weak tags never
    match). Every If-Match line counts: they are one list (web/conditions.py);
    an empty or malformed one matches nothing."""
    listed = entity_tags(request, "If-Match")
    current = etag(clip).strip('"')
    if listed is not None and not any(
        tag.any or (not tag.weak and tag.value == current) for tag in listed
    ):
        raise Problem(
            412, "The clip changed since you read it; fetch it again", headers={"ETag": etag(clip)}
        )


@routes.get("/clips")
@routes.get("/clips/")
async def list_clips(request: web.Request) -> web.Response:
    query = parse_query(ListQuery, request)
    renderer = Renderer(request)

    async def render() -> Page:
        after = decode_cursor(query.sort, query.cursor) if query.cursor else None
        rows = await clips.list_clips(
            request.app[POOL],
            sort=query.sort,
            genre=query.genre,
            search=query.q,
            after=after,
            limit=query.limit + 1,  # one more tells whether a next page exists
        )
        page, more = rows[: query.limit], len(rows) > query.limit
        cursor = None
        if more:
            cursor = encode_cursor(query.sort, clips.sort_key(query.sort, page[-1]), page[-1]["id"])
        return Page(encode_json([renderer.clip(c) for c in page]), cursor)

    # The page is the same for every request that asks the same (stream
    # URLs carry the base URL); the Link keeps this request's own query.
    key = (query.sort, query.genre, query.q, query.limit, query.cursor, renderer.base)
    page = await request.app[PAGE_CACHE].get(key, render)
    headers = {}
    if page.cursor is not None:
        link = next_link(renderer.base + request.path, dict(request.query), page.cursor)
        headers["Link"] = link
    return encoded_json_response(page.body, headers=headers)


async def existing_clip(request: web.Request) -> Row:
    """The clip the path names, or a 404."""
    clip_id = parse_id(request.match_info["clip_id"])
    clip = await clips.get_clip(request.app[POOL], clip_id)
    if clip is None:
        raise Problem(404, f"No clip has id {clip_id}")
    return clip


@routes.get("/clips/{clip_id}")
async def show_clip(request: web.Request) -> web.Response:
    clip = await existing_clip(request)
    return json_response(Renderer(request).clip(clip), headers={"ETag": etag(clip)})


@routes.get("/clips/{clip_id}/stats")
async def clip_stats(request: web.Request) -> web.Response:
    clip_id = parse_id(request.match_info["clip_id"])
    stats = await clips.get_clip_stats(request.app[POOL], clip_id)
    if stats is None:
        raise Problem(404, f"No clip has id {clip_id}")
    body: ClipStats = {
        **Renderer(request).clip(stats),
        "plays_by_day": [
            {"date": day, "plays": plays}
            for day, plays in zip(stats["days"], stats["plays"], strict=True)
        ],
    }
    return json_response(body)


@routes.post("/clips")
@routes.post("/clips/")
async def create_clip(request: web.Request) -> web.Response:
    if request.content_type == "multipart/form-data":
        clip = await create_uploaded(request)
    else:
        clip = await create_remote(request)
    request.app[JOBS].wake()  # its jobs were queued with it
    request.app[PAGE_CACHE].clear()
    request[CLIP_ID] = clip["id"]  # for its access-log line
    location = f"{base_url(request)}/clips/{clip['id']}"
    return json_response(
        Renderer(request).clip(clip), status=201, headers={"Location": location, "ETag": etag(clip)}
    )


async def check_audio_url(request: web.Request, audio_url: str) -> None:
    upstream = request.app[UPSTREAM]
    try:
        await upstream.guard.check_url_resolving(yarl.URL(audio_url), upstream.resolver)
    except UpstreamRefused as refused:
        raise Problem(
            400,
            f"audio_url is refused: {refused}",
            errors=[{"field": "audio_url", "reason": str(refused)}],
        ) from None


async def create_remote(request: web.Request) -> Row:
    new = await parse_json(NewClip, request)
    await check_audio_url(request, new.audio_url)
    return await clips.create_clip(
        request.app[POOL],
        title=new.title,
        description=new.description,
        genre=new.genre,
        duration_seconds=new.duration_seconds,
        audio_url=new.audio_url,
        media_path=None,
        content_type=new.content_type or guess_audio_type(new.audio_url),
        jobs=("peaks",),
    )


async def create_uploaded(request: web.Request) -> Row:
    async with request.app[UPLOADS].receive(request) as upload:
        form = validate(UploadForm, upload.fields, "form fields")
        clip = await clips.create_clip(
            request.app[POOL],
            title=form.title,
            description=form.description,
            genre=form.genre,
            duration_seconds=upload.duration_seconds,
            audio_url=None,
            media_path=upload.name,
            content_type=upload.content_type,
            size_bytes=upload.size_bytes,
            sha256=upload.sha256,
            bitrate=upload.bitrate,
            jobs=("preview", "peaks"),
        )
        upload.keep()
    return clip


@routes.patch("/clips/{clip_id}")
async def update_clip(request: web.Request) -> web.Response:
    clip = await existing_clip(request)
    changes = (await parse_json(ClipChanges, request)).model_dump(exclude_none=True)
    clip_id = clip["id"]
    check_version(request, clip)
    if "audio_url" in changes:
        if clip["media_path"] is not None:
            raise Problem(
                400,
                "This clip's audio is stored here; it has no audio_url to change",
                errors=[{"field": "audio_url", "reason": "stored audio"}],
            )
        await check_audio_url(request, changes["audio_url"])
    stored = clip["media_path"] is not None
    if (
        stored
        and changes.get("duration_seconds", clip["duration_seconds"]) != clip["duration_seconds"]
    ):
        # Measured from the file at upload: streams are timed by it, and the
        # preview and peaks jobs judge the decoded audio against it (jobs/media.py).
        raise Problem(
            400,
            "This clip's duration is measured from its stored audio; it cannot be changed",
            errors=[{"field": "duration_seconds", "reason": "measured from the stored audio"}],
        )
    updated = await clips.update_clip(request.app[POOL], clip_id, clip["updated_at"], changes)
    if updated is None:
        raise Problem(412, "The clip changed or vanished meanwhile; fetch it again")
    request.app[CLIP_CACHE].forget(clip_id)
    if "audio_url" in changes and (cache := request.app.get(CACHE)) is not None:
        cache.drop(clip_id)  # the old audio is never served again
    if changes.get("audio_url", clip["audio_url"]) != clip["audio_url"]:
        await queue.queue_peaks(request.app[POOL], clip_id)  # other audio, other waveform
        request.app[JOBS].wake()
    request.app[PAGE_CACHE].clear()
    return json_response(Renderer(request).clip(updated), headers={"ETag": etag(updated)})


@routes.delete("/clips/{clip_id}")
async def delete_clip(request: web.Request) -> web.Response:
    clip = await existing_clip(request)
    clip_id = clip["id"]
    check_version(request, clip)
    deleted = await clips.delete_clip(request.app[POOL], clip_id, clip["updated_at"])
    if deleted is None:
        raise Problem(412, "The clip changed or vanished meanwhile; fetch it again")
    request.app[CLIP_CACHE].forget(clip_id)
    if (cache := request.app.get(CACHE)) is not None:
        cache.drop(clip_id)
    request.app[PAGE_CACHE].clear()
    for name in (deleted["media_path"], deleted["preview_path"]):
        if name is not None and BUCKET in request.app:
            await request.app[BUCKET].delete(name)
        elif name is not None:
            request.app[MEDIA_STORE].delete(name)
    return web.Response(status=204)


def guess_audio_type(url: str) -> str:
    guessed, _ = mimetypes.guess_type(yarl.URL(url).path)
    return guessed if guessed and guessed.startswith("audio/") else "audio/mpeg"
