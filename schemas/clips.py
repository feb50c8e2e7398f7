"""A clip: what a response carries (`Clip`), and what a request may send.

Adding a field to a clip touches its migration (the table is the queries'
one column list: every clip query returns `clips.*`), `Clip` below, and
nothing else: rendering copies `COLUMNS` from the row, and the OpenAPI
document is generated from these classes.
"""

from datetime import date, datetime, timedelta
from typing import Annotated, Literal

import yarl
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
    with_config,
)
from typing_extensions import TypedDict  # pydantic needs it before Python 3.12

from db.clips import Sort
from schemas.fields import (
    BIGINT_MAX,
    INTEGER_MAX,
    SHA256,
    AudioUrl,
    ContentType,
    Description,
    DurationSeconds,
    Genre,
    Search,
    Title,
)

# What /docs shows as a sample of each shape: a seeded demo clip as a fresh
# `make run` serves it.
CLIP_EXAMPLE = {
    "id": 1,
    "title": "Sunrise Arpeggio",
    "description": "Slow rising arpeggios.",
    "genre": "ambient",
    "duration_seconds": 24.0,
    "audio_url": None,
    "content_type": "audio/wav",
    "play_count": 3,
    "last_played_at": "2026-11-27T09:12:44.120512+00:00",
    "created_at": "2026-11-26T17:44:05.386824+00:00",
    "size_bytes": 1058444,
    "sha256": "1ba405076258a91e03c99dbe68e9a53623fb98887374f4c15425a62219474eb1",
    "bitrate": 352800,
    "stream_url": "http://127.0.0.1:8000/clips/1/stream",
    "preview": {
        "status": "ready",
        "content_type": "audio/mpeg",
        "size_bytes": 192470,
        "bitrate": 64000,
        "reason": None,
    },
    "peaks_url": "http://127.0.0.1:8000/clips/1/peaks",
}

PREVIEW_STATUSES = ("pending", "ready", "failed")


class Preview(TypedDict):
    """A stored clip's compressed preview (jobs/): what stream_url plays
    once it is ready."""

    status: Annotated[
        Literal["pending", "ready", "failed"],
        Field(
            description="pending until its job ends; ready: stream_url plays it; failed:"
            " stream_url plays the original (see reason)"
        ),
    ]
    content_type: Annotated[ContentType | None, Field(description="Once ready")]
    size_bytes: Annotated[int | None, Field(gt=0, description="Once ready")]
    bitrate: Annotated[
        int | None, Field(gt=0, le=INTEGER_MAX, description="Bits per second, once ready")
    ]
    reason: Annotated[str | None, Field(description="Why no preview could be made, when failed")]


@with_config(ConfigDict(json_schema_extra={"examples": [CLIP_EXAMPLE]}))
class Clip(TypedDict):
    """A clip as every response shows it."""

    id: Annotated[
        int, Field(ge=1, le=BIGINT_MAX, description=f"1 to {BIGINT_MAX} (a 64-bit integer)")
    ]
    title: Title
    description: Description
    genre: Genre
    duration_seconds: Annotated[DurationSeconds, Field(description="Seconds of audio")]
    audio_url: Annotated[
        str | None, Field(description="Where the audio lives; null for audio stored here")
    ]
    content_type: ContentType
    play_count: Annotated[int, Field(ge=0, description="Plays counted so far")]
    last_played_at: Annotated[datetime | None, Field(description="null until the first play")]
    created_at: datetime
    size_bytes: Annotated[int | None, Field(gt=0, description="Uploaded audio only")]
    sha256: Annotated[str | None, Field(pattern=SHA256, description="Uploaded audio only")]
    bitrate: Annotated[
        int | None, Field(gt=0, le=INTEGER_MAX, description="Bits per second; uploaded audio only")
    ]
    stream_url: Annotated[
        str,
        Field(
            json_schema_extra={"format": "uri"},
            description="Where <audio> plays it: the preview once ready; until then"
            " (or if it failed) a URL naming `variant=original`, so a URL always plays the"
            " same bytes (add `variant=original` to the plain one for the original);"
            " signed when API keys are set",
        ),
    ]
    preview: Annotated[
        Preview | None,
        Field(description="null for remote audio (and stored clips queued before previews)"),
    ]
    peaks_url: Annotated[
        str,
        Field(
            json_schema_extra={"format": "uri"},
            description="Its waveform (audiowaveform JSON); 404 until computed",
        ),
    ]


# Fields computed per request rather than stored: the rest are columns.
DERIVED = frozenset({"stream_url", "preview", "peaks_url"})
COLUMNS = tuple(name for name in Clip.__annotations__ if name not in DERIVED)


class DayPlays(TypedDict):
    date: date
    plays: Annotated[int, Field(ge=0)]


@with_config(
    ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    **CLIP_EXAMPLE,
                    "plays_by_day": [
                        {"date": str(date(2026, 10, 29) + timedelta(days=n)), "plays": plays}
                        for n, plays in enumerate([0] * 28 + [2, 1])
                    ],
                }
            ]
        }
    )
)
class ClipStats(Clip):
    """A clip and its plays per UTC day, the last 30 days, oldest first."""

    plays_by_day: Annotated[list[DayPlays], Field(min_length=30, max_length=30)]


class ListQuery(BaseModel):
    """GET /clips parameters. An empty value means "not given", as an HTML
    search form sends `q=` when the box is left empty."""

    genre: Genre | None = Field(None, description="Only clips of this genre")
    q: Search | None = Field(None, description="Words in the title or description")
    sort: Sort = Field("newest", description="newest first, most played, or by title")
    limit: int = Field(50, ge=1, le=200, description="Clips per page")
    cursor: Annotated[str, StringConstraints(max_length=1000)] | None = Field(
        None, description='Where the next page starts: follow the `rel="next"` Link'
    )

    @model_validator(mode="before")
    @classmethod
    def _empty_is_absent(cls, data: object) -> object:
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value != ""}
        return data


def absolute_http_url(value: str | None) -> str | None:
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

    # No example: schemathesis sends schema examples, and a clip at a made-up
    # origin would be streamed (a 502, and a DNS query) by the fuzz test.

    duration_seconds: DurationSeconds
    audio_url: AudioUrl
    content_type: ContentType | None = None

    _url = field_validator("audio_url")(absolute_http_url)


class ClipChanges(BaseModel, extra="forbid"):
    """PATCH /clips/{id}: the fields to change, validated like a new clip."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"title": "Sunrise Arpeggio (long)", "genre": "ambient"}]}
    )

    title: Title | None = None
    description: Description | None = None
    genre: Genre | None = None
    duration_seconds: DurationSeconds | None = None
    audio_url: AudioUrl | None = None
    content_type: ContentType | None = None

    _url = field_validator("audio_url")(absolute_http_url)
