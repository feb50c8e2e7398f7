"""The clip catalogue: list, show, stats, create (remote URL or upload), edit, delete."""

import base64
import binascii
import json
import mimetypes
from datetime import UTC, datetime
from typing import Annotated

import yarl
from aiohttp import web
from asyncpg import Record
from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from db import POOL, clips
from db.clip_cache import CLIP_CACHE
from handlers import uploads
from handlers.auth import ACCESS
from handlers.params import BIGINT_MAX, parse_id, parse_json, parse_query, storable, validate
from handlers.problems import Problem
from handlers.responses import json_response
from handlers.upstream import UPSTREAM, UpstreamRefused
from settings import SETTINGS

routes = web.RouteTableDef()

GENRE = r"^[a-z0-9]+(-[a-z0-9]+)*$"
Genre = Annotated[str, StringConstraints(max_length=40, pattern=GENRE)]
CONTENT_TYPE = r"^audio/[a-z0-9.+-]+$"


Search = Annotated[str, StringConstraints(min_length=1, max_length=200), AfterValidator(storable)]


class ListQuery(BaseModel):
    """GET /clips parameters. An empty value means "not given", as an HTML
    search form sends `q=` when the box is left empty."""

    genre: Genre | None = None
    q: Search | None = None
    sort: clips.Sort = "newest"
    limit: int = Field(50, ge=1, le=200)
    cursor: Annotated[str, StringConstraints(max_length=1000)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _empty_is_absent(cls, data: object) -> object:
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value != ""}
        return data


Title = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    AfterValidator(storable),
]
Description = Annotated[
    str, StringConstraints(strip_whitespace=True, max_length=2000), AfterValidator(storable)
]
AudioUrl = Annotated[
    str, StringConstraints(strip_whitespace=True, max_length=2048), AfterValidator(storable)
]
ContentType = Annotated[str, StringConstraints(pattern=CONTENT_TYPE)]


def _absolute_http_url(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        url = yarl.URL(value)
    except ValueError as error:
        raise ValueError(f"not a URL: {error}") from None
    # The stored text must itself start with http:// or https:// (the schema
    # checks it): yarl also reads "HTTP://h" as an http URL.
    value = value[: len(url.scheme)].lower() + value[len(url.scheme) :]
    if not url.raw_host or not value.startswith(("http://", "https://")):
        raise ValueError("must be an absolute http:// or https:// URL")
    return value


class UploadForm(BaseModel, extra="forbid"):
    """The text fields of a multipart upload; the audio file is the rest."""

    title: Title
    description: Description = ""
    genre: Genre


class NewClip(UploadForm):
    """A clip whose audio stays at a remote URL."""

    duration_seconds: float = Field(gt=0, le=86400, strict=True)
    audio_url: AudioUrl
    content_type: ContentType | None = None

    _url = field_validator("audio_url")(_absolute_http_url)


class ClipChanges(BaseModel, extra="forbid"):
    """PATCH /clips/{id}: the fields to change, validated like a new clip."""

    title: Title | None = None
    description: Description | None = None
    genre: Genre | None = None
    duration_seconds: float | None = Field(None, gt=0, le=86400, strict=True)
    audio_url: AudioUrl | None = None
    content_type: ContentType | None = None

    _url = field_validator("audio_url")(_absolute_http_url)


def base_url(request: web.Request) -> str:
    configured = request.app[SETTINGS].public_url
    return configured.rstrip("/") if configured else f"{request.scheme}://{request.host}"


class Renderer:
    """Clip rows as response bodies, for one request: the base URL and the
    signer are looked up once, not once per clip of a page."""

    def __init__(self, request: web.Request):
        self.base = base_url(request)
        self.signer = request.app[ACCESS].signer

    def stream_url(self, clip_id: int) -> str:
        """The clip's stream URL, signed when stream URLs are (handlers/auth)."""
        url = f"{self.base}/clips/{clip_id}/stream"
        if self.signer:
            signed = self.signer.sign(clip_id)
            url += f"?exp={signed['exp']}&sig={signed['sig']}"  # URL-safe already
        return url

    def clip(self, clip: Record) -> dict[str, object]:
        return {
            "id": clip["id"],
            "title": clip["title"],
            "description": clip["description"],
            "genre": clip["genre"],
            "duration_seconds": clip["duration_seconds"],
            "audio_url": clip["audio_url"],
            "content_type": clip["content_type"],
            "play_count": clip["play_count"],
            "last_played_at": clip["last_played_at"],
            "created_at": clip["created_at"],
            "size_bytes": clip["size_bytes"],
            "sha256": clip["sha256"],
            "bitrate": clip["bitrate"],
            "stream_url": self.stream_url(clip["id"]),
        }


def etag(clip: Record) -> str:
    """The version of a clip's metadata (not of its play count)."""
    return f'"{clip["id"]}-{clip["updated_at"].timestamp():.6f}"'


def check_version(request: web.Request, clip: Record) -> None:
    """If-Match: change the clip only if nobody changed it since."""
    wanted = request.headers.get("If-Match")
    if wanted is not None and wanted.strip() != "*" and etag(clip) not in wanted.split(","):
        raise Problem(
            412, "The clip changed since you read it; fetch it again", headers={"ETag": etag(clip)}
        )


def encode_cursor(sort: clips.Sort, clip: Record) -> str:
    key = {
        "newest": lambda: clip["created_at"].isoformat(),
        "popular": lambda: clip["play_count"],
        "title": lambda: clip["title_key"],
    }[sort]()
    raw = json.dumps([sort, key, clip["id"]], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(sort: clips.Sort, cursor: str) -> tuple[object, int]:
    """The keyset (sort key, id) a cursor carries, or a 400."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        cursor_sort, key, clip_id = json.loads(raw)
        if cursor_sort != sort:
            raise ValueError("made for another sort order")
        if type(clip_id) is not int or not 1 <= clip_id <= BIGINT_MAX:
            raise ValueError("bad id")
        if sort == "newest":
            key = datetime.fromisoformat(key)
            if key.tzinfo is None:
                raise ValueError("naive timestamp")
            key = key.astimezone(UTC)  # asyncpg would overflow on year 1 at +05:00
        elif sort == "popular" and (type(key) is not int or not 0 <= key <= BIGINT_MAX):
            raise ValueError("bad play count")
        elif sort == "title":
            if type(key) is not str:
                raise ValueError("bad title")
            storable(key).encode()  # no NUL, no lone surrogate from a "\\ud800" escape
        return key, clip_id
    except (ValueError, TypeError, OverflowError, binascii.Error):
        raise Problem(
            400,
            "cursor is not one this listing gave out; start again without it",
            errors=[{"field": "cursor", "reason": f"invalid for sort={sort}"}],
        ) from None


def like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


@routes.get("/clips")
@routes.get("/clips/")
async def list_clips(request: web.Request) -> web.Response:
    query = parse_query(ListQuery, request)
    after = decode_cursor(query.sort, query.cursor) if query.cursor else None
    rows = await clips.list_clips(
        request.app[POOL],
        sort=query.sort,
        genre=query.genre,
        pattern=like_pattern(query.q) if query.q else None,
        after=after,
        limit=query.limit + 1,  # one more tells whether a next page exists
    )
    page, more = rows[: query.limit], len(rows) > query.limit
    headers = {}
    if more:
        next_url = yarl.URL(base_url(request) + request.path).with_query(
            {**request.query, "cursor": encode_cursor(query.sort, page[-1])}
        )
        headers["Link"] = f'<{next_url}>; rel="next"'
    renderer = Renderer(request)
    return json_response([renderer.clip(c) for c in page], headers=headers)


async def existing_clip(request: web.Request) -> Record:
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
    body = Renderer(request).clip(stats)
    body["plays_by_day"] = [
        {"date": day, "plays": plays}
        for day, plays in zip(stats["days"], stats["plays"], strict=True)
    ]
    return json_response(body)


@routes.post("/clips")
@routes.post("/clips/")
async def create_clip(request: web.Request) -> web.Response:
    if request.content_type == "multipart/form-data":
        clip = await create_uploaded(request)
    else:
        clip = await create_remote(request)
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


async def create_remote(request: web.Request) -> Record:
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
    )


async def create_uploaded(request: web.Request) -> Record:
    settings = request.app[SETTINGS]
    async with uploads.receive(request, settings.media_dir, settings.max_upload_bytes) as upload:
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
    updated = await clips.update_clip(request.app[POOL], clip_id, clip["updated_at"], changes)
    if updated is None:
        raise Problem(412, "The clip changed or vanished meanwhile; fetch it again")
    request.app[CLIP_CACHE].forget(clip_id)
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
    if deleted["media_path"] is not None:
        (request.app[SETTINGS].media_dir / deleted["media_path"]).unlink(missing_ok=True)
    return web.Response(status=204)


def guess_audio_type(url: str) -> str:
    guessed, _ = mimetypes.guess_type(yarl.URL(url).path)
    return guessed if guessed and guessed.startswith("audio/") else "audio/mpeg"
