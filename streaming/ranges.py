"""Range and conditional requests (RFC 9110 §13, §14), one reading for both
sources: stored files and remote origins.

What a request asks for is read once (`requested_range`). A `Range` the
server may ignore is ignored, as if absent, and the whole representation
is sent (200): a unit other than `bytes`, several ranges (never sent by a
browser's media player), a malformed or backwards range, and any `Range`
on a method other than GET (RFC 9110 §14.2 defines it for GET only; a HEAD
answers the whole length). A syntactically valid range that cannot be
satisfied (it starts past the end, or `bytes=-0`) is a 416 naming the
size. `If-Range` holds only for a strong entity tag that matches exactly,
or a date equal to Last-Modified (§13.1.5); otherwise the whole
representation is sent.

Every field is read with all its lines (web/conditions.py): several
`Range` lines make one value with several ranges (ignored), several
`If-None-Match` lines one list, and a field that takes one value
(`If-Range`, `If-Modified-Since`) sent twice is invalid: an `If-Range`
that cannot be read does not hold, and such an `If-Modified-Since` is
ignored (§13.1.3).
"""

import re
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime

from aiohttp import web

from web.conditions import entity_tags, field_value, single_value
from web.problems import Problem

# ASCII digits only (`\d` alone also matches other scripts' digits), and
# at most 100 of them: int() refuses more than 4,300, and no audio needs a
# 101-digit offset, so a longer number makes the Range malformed (ignored).
_SPEC = re.compile(r"\s*(\d{0,100})\s*-\s*(\d{0,100})\s*", re.ASCII)
_CONTENT_RANGE = re.compile(r"bytes (\d{1,100})-(\d{1,100})/(\d{1,100}|\*)", re.ASCII)


@dataclass(frozen=True)
class ByteRange:
    """One range of bytes as asked: `first` to `last` inclusive (`last`
    None: to the end), or with `first` None the last `suffix` bytes."""

    first: int | None
    last: int | None = None
    suffix: int | None = None

    @property
    def from_start(self) -> bool:
        return self.first == 0

    def header(self) -> str:
        """The Range header asking for this range."""
        if self.first is None:
            return f"bytes=-{self.suffix}"
        return f"bytes={self.first}-{'' if self.last is None else self.last}"

    def resolve(self, size: int) -> tuple[int, int]:
        """(offset, count) of this range in a representation of `size`
        bytes; raises a 416 problem when none of it is there."""
        if self.first is None:
            offset = max(size - self.suffix, 0)
            if self.suffix == 0 or size == 0:
                raise unsatisfiable(self, size)
            return offset, size - offset
        if self.first >= size:
            raise unsatisfiable(self, size)
        end = size if self.last is None else min(self.last + 1, size)
        return self.first, end - self.first


def unsatisfiable(wanted: ByteRange, size: int) -> Problem:
    return Problem(
        416,
        f"Range {wanted.header()} is outside the audio's {size} bytes",
        headers={"Content-Range": f"bytes */{size}"},
    )


def requested_range(request: web.Request) -> ByteRange | None:
    """The single byte range a request asks for, or None for the whole
    representation (no Range, or one that is ignored: see above)."""
    header = field_value(request, "Range")
    if header is None or request.method != "GET":
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    match = _SPEC.fullmatch(spec)
    if match is None or not (match[1] or match[2]):
        return None
    if not match[1]:
        return ByteRange(None, suffix=int(match[2]))
    first, last = int(match[1]), int(match[2]) if match[2] else None
    if last is not None and last < first:
        return None
    return ByteRange(first, last)


def if_range_holds(request: web.Request, etag: str | None, last_modified: str | None) -> bool:
    """Whether a range may be sent: no If-Range, or it names this very
    version. `etag` and `last_modified` are the header values as sent."""
    if "If-Range" not in request.headers:
        return True
    value = (single_value(request, "If-Range") or "").strip()
    if value.startswith(('"', "W/")):
        return etag is not None and not etag.startswith("W/") and value == etag.strip()
    return http_date(value) is not None and http_date(value) == http_date(last_modified)


def http_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None


def not_modified(request: web.Request, etag: str | None, last_modified: str | None) -> bool:
    """If-None-Match (weak comparison; an empty or malformed list matches
    nothing, and without an `etag` only `*` matches), else
    If-Modified-Since (§13.1.2-3)."""
    if (tags := entity_tags(request, "If-None-Match")) is not None:
        if etag is None:
            return any(tag.any for tag in tags)
        current = etag.removeprefix("W/").strip('"')
        return any(tag.any or tag.value == current for tag in tags)
    since = modified_since(request)
    if since is None:  # the usual case: no date to parse ours against
        return False
    modified = http_date(last_modified)
    return modified is not None and modified <= since


def modified_since(request: web.Request) -> datetime | None:
    """If-Modified-Since, when it is one valid date (else it is ignored)."""
    return http_date(single_value(request, "If-Modified-Since"))


def content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """(first, last, size or None) of a `Content-Range: bytes a-b/c` value;
    None unless it is one (last before first, or at or past the size, is
    not)."""
    match = _CONTENT_RANGE.fullmatch((value or "").strip())
    if match is None:
        return None
    first, last, size = int(match[1]), int(match[2]), None if match[3] == "*" else int(match[3])
    if last < first or (size is not None and last >= size):
        return None
    return first, last, size
